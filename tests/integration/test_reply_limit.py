"""A store with a lower --max-text-bytes: every stream's headers carry the limit, and the bot
cuts its replies to it instead of sending replies the store refuses (which used to end DEAD)."""

from __future__ import annotations

import pytest

from ackbot.common.limits import REPLY_LIMIT_METADATA
from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import create, list_all, seconds, wait_state

MAX_TEXT_BYTES = 120


@pytest.fixture
def store(start_store):
    return start_store(args=["--max-text-bytes", str(MAX_TEXT_BYTES), "--max-attempts", "2"])


async def test_a_stream_is_told_the_stores_text_limit(stub):
    call = stub.StreamUnprocessed(
        pb.StreamUnprocessedRequest(consumer="probe", lease_duration=seconds(5)),
        timeout=RPC_TIMEOUT,
    )
    try:
        headers = await call.initial_metadata()
        assert headers.get(REPLY_LIMIT_METADATA) == str(MAX_TEXT_BYTES)
    finally:
        call.cancel()


async def test_the_bot_cuts_a_long_reply_to_the_stores_limit(stub, start_bot):
    await start_bot()
    # The persona quotes the message, so its reply to a text near the limit is over it.
    text = "ü" * (MAX_TEXT_BYTES // 2)
    await create(stub, text, id="long-one")
    processed = await wait_state(stub, "long-one", pb.MESSAGE_STATE_PROCESSED, within=30)
    assert processed.delivery_attempts == 1
    [reply] = await list_all(stub, reply_to="long-one")
    assert 0 < len(reply.text.encode("utf-8")) <= MAX_TEXT_BYTES
