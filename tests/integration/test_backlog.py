"""A backlog bigger than the 1,000-key page that broke the old fix: all answered once."""

from __future__ import annotations

import pytest

from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    check_answered_once,
    count_state,
    create_many,
    list_all,
    wait_settled,
)

pytestmark = pytest.mark.slow

BACKLOG = 1500


async def test_1500_messages_stored_before_the_bot_starts_are_all_answered_once(stub, start_bot):
    ids = await create_many(stub, BACKLOG, clients=10, prefix="backlog")
    assert await count_state(stub, pb.MESSAGE_STATE_PENDING) == BACKLOG

    await start_bot(persona="ackbot", max_in_flight=32)
    await wait_settled(stub, expected_processed=2 * BACKLOG, within=100)

    messages = await list_all(stub)
    assert len(messages) == 2 * BACKLOG
    check_answered_once(messages, ids, personas={"ackbot"})
