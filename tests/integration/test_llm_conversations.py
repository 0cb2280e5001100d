"""A real store and a real `ackbot-bot --backend openai` pointed at the scripted model server
(ackbot.testing.fake_llm), on conversations: the model gets the conversation's earlier turns,
the bot's own replies in the assistant role, trimmed to --llm-context-turns; and a burst of
messages gets one reply, written from all of them (--on-stale supersede, the default), or one
each (--on-stale answer-each)."""

from __future__ import annotations

import threading

import pytest

from ackbot.testing import RPC_TIMEOUT, wait_until
from ackbot.testing.fake_llm import FakeLLM, Hold, answer_to
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import list_all, wait_state

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_llm():
    with FakeLLM() as server:
        yield server


def llm_args(fake_llm: FakeLLM, *extra: str) -> list[str]:
    return [
        "--backend",
        "openai",
        "--llm-url",
        fake_llm.openai_url,
        "--llm-model",
        "fake-1",
        *extra,
    ]


async def post(stub, message_id: str, author: str, conversation: str = "thread") -> None:
    message = pb.Message(
        id=message_id, author=author, text=message_id, conversation_id=conversation
    )
    await stub.CreateMessage(pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT)


async def answered(stub, message_id: str) -> None:
    await wait_state(stub, message_id, pb.MESSAGE_STATE_PROCESSED, within=30)


def chat(request) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request.body["messages"][1:]]


async def test_the_model_gets_the_conversation_so_far_with_its_own_replies_as_the_assistant(
    stub, start_bot, fake_llm
):
    await start_bot(persona="ava", args=[*llm_args(fake_llm), "--llm-context-turns", "3"])
    await post(stub, "q-one", "ana")
    await answered(stub, "q-one")
    await post(stub, "q-two", "bo")
    await answered(stub, "q-two")
    await post(stub, "q-other", "cy", conversation="elsewhere")
    await answered(stub, "q-other")
    await post(stub, "q-three", "ana")
    await answered(stub, "q-three")

    [first] = fake_llm.requests_for("q-one")
    assert chat(first) == [("user", "ana: q-one")]
    [third] = fake_llm.requests_for("q-three")
    assert chat(third) == [
        # Three turns: the oldest, ana's q-one, did not fit.
        ("assistant", answer_to("ana: q-one")),
        ("user", "bo: q-two"),
        ("assistant", answer_to("bo: q-two")),
        ("user", "ana: q-three"),
    ]


BURST = ["b-one", "b-two", "b-three"]


async def burst_while_the_model_writes(stub, fake_llm: FakeLLM) -> None:
    """b-one goes to the model, which holds its answer until b-two and b-three are stored."""
    gate = threading.Event()
    fake_llm.script("b-one", Hold(gate), then=Hold(gate))
    await post(stub, "b-one", "ana")
    await wait_until(lambda: fake_llm.requests_for("b-one"), within=30, what="b-one asked")
    await post(stub, "b-two", "ana")
    await post(stub, "b-three", "ana")
    gate.set()
    for message_id in BURST:
        await answered(stub, message_id)


async def test_a_burst_gets_one_reply_written_from_all_of_it(stub, start_bot, fake_llm):
    bot = await start_bot(persona="ava", args=llm_args(fake_llm))

    await burst_while_the_model_writes(stub, fake_llm)

    replies = [m for m in await list_all(stub) if m.reply_to]
    assert [(r.reply_to, r.conversation_id) for r in replies] == [("b-three", "thread")]
    # b-one's reply was refused as stale by the store; b-two's model call was never made.
    assert len(fake_llm.requests_for("b-one")) == 1
    assert fake_llm.requests_for("b-two") == []
    [newest] = fake_llm.requests_for("b-three")
    assert chat(newest) == [
        ("user", "ana: b-one"),
        ("user", "ana: b-two"),
        ("user", "ana: b-three"),
    ]
    log = bot.log_text()
    for message_id in ("b-one", "b-two"):
        assert (
            f"superseded by newest_message_id=b-three: processed without a reply "
            f"message_id={message_id}" in log
        )


async def test_answer_each_answers_every_message_of_a_burst(stub, start_bot, fake_llm):
    await start_bot(persona="ava", args=[*llm_args(fake_llm), "--on-stale", "answer-each"])

    await burst_while_the_model_writes(stub, fake_llm)

    replies = sorted(m.reply_to for m in await list_all(stub) if m.reply_to)
    assert replies == sorted(BURST)
    assert [len(fake_llm.requests_for(m)) for m in BURST] == [1, 1, 1]
