"""A real store and a real `ackbot-bot --backend openai` pointed at the scripted model server
(ackbot.testing.fake_llm), on conversations: the model gets the conversation's earlier turns,
the bot's own replies in the assistant role, trimmed to --llm-context-turns."""

from __future__ import annotations

import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.testing.fake_llm import FakeLLM, answer_to
from ackbot.v1 import message_store_pb2 as pb

from .harness import wait_state

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
