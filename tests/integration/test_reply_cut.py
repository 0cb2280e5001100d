"""A model's reply cut by its token limit and then by the store's --max-text-bytes keeps its
cut mark: the bot cuts first and marks after (issue 21, item 8)."""

from __future__ import annotations

import pytest

from ackbot.common.limits import CUT_MARK
from ackbot.testing.fake_llm import FakeLLM, Reply
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import list_all, wait_state

MAX_TEXT_BYTES = 4001


@pytest.fixture
def fake_llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture
def store(start_store):
    return start_store(args=["--max-text-bytes", str(MAX_TEXT_BYTES), "--max-attempts", "2"])


async def test_a_long_cut_answer_is_cut_to_the_store_limit_and_still_marked(
    stub, start_bot, fake_llm
):
    fake_llm.script("long", Reply("story " * 17_000, finish_reason="length"))
    await start_bot(
        persona="ava",
        args=["--backend", "openai", "--llm-url", fake_llm.openai_url, "--llm-model", "fake-1"],
    )
    await stub.CreateMessage(
        pb.CreateMessageRequest(message=pb.Message(id="long", author="ana", text="long")),
        timeout=10,
    )
    await wait_state(stub, "long", pb.MESSAGE_STATE_PROCESSED, within=60)
    [reply] = await list_all(stub, reply_to="long")
    assert len(reply.text.encode("utf-8")) <= MAX_TEXT_BYTES
    assert reply.text.endswith(CUT_MARK)
