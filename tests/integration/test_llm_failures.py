"""A real store and a real `ackbot-bot --backend openai|ollama` pointed at a scripted model server
(ackbot.testing.fake_llm): what each kind of model answer or failure leaves in the store, read
back through the store's RPCs (state, attempts, last_error, the reply).

| model server                         | message                                            |
| ------------------------------------ | -------------------------------------------------- |
| a reply                              | PROCESSED, the reply stored                        |
| 429 / 503, with or without Retry-After | handed back, attempt not counted: never DEAD     |
| thinking only, then an answer with thinking off | PROCESSED after two requests            |
| empty, even with thinking off        | released with the cause, DEAD after max attempts   |
| 500                                  | released with the status, attempts counted, DEAD   |
| a stall past the timeout             | released with "no answer within", DEAD             |
| a cut connection                     | released with "connection failed", DEAD            |
| finish_reason length                 | PROCESSED, the reply ending with the cut marker    |
"""

from __future__ import annotations

import pytest

from ackbot.bot.llm import CUT_MARKER
from ackbot.testing import wait_until
from ackbot.testing.fake_llm import Cut, FakeLLM, Reply, Stall, Status, Thinks, answer_to
from ackbot.v1 import message_store_pb2 as pb

from .harness import get, list_all, wait_state

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 2
TIMEOUT_SECONDS = 1


@pytest.fixture
def fake_llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture
def max_attempts() -> int:
    return MAX_ATTEMPTS


@pytest.fixture
def store(start_store, max_attempts):
    return start_store(args=["--max-attempts", str(max_attempts)])


def llm_args(fake_llm: FakeLLM, backend: str, *extra: str) -> list[str]:
    url = fake_llm.openai_url if backend == "openai" else fake_llm.url
    return ["--backend", backend, "--llm-url", url, "--llm-model", "fake-1", *extra]


async def create(stub, message_id: str) -> None:
    # The id is the text too: the fake server's scripts match on the text.
    await stub.CreateMessage(
        pb.CreateMessageRequest(message=pb.Message(id=message_id, author="ana", text=message_id)),
        timeout=10,
    )


@pytest.mark.parametrize("backend", ["openai", "ollama"])
async def test_each_kind_of_model_answer_ends_as_it_should(stub, start_bot, fake_llm, backend):
    fake_llm.script("busy-after", *[Status(429, retry_after="1")] * 3, then=Reply())
    fake_llm.script("busy-plain", *[Status(503)] * 3, then=Reply())
    fake_llm.script("busy-forever", Status(429, retry_after="1"))
    fake_llm.script("ponder", Thinks(then=Reply("A considered answer.")))
    fake_llm.script("empty", Reply("", reasoning="r" * 300))
    fake_llm.script("boom", Status(500, message="model crashed"))
    fake_llm.script("stall", Stall(30))
    fake_llm.script("cut", Cut())
    fake_llm.script("long", Reply("Once upon a time there was a", finish_reason="length"))
    # Three different messages fail here with a 5xx, a timeout and a cut, perhaps in a row: a
    # wider window keeps the breaker (test_model_outage.py) out of this table of single failures.
    bot = await start_bot(
        persona="ava",
        args=llm_args(
            fake_llm,
            backend,
            "--llm-timeout-seconds",
            str(TIMEOUT_SECONDS),
            "--model-failure-window",
            "10",
        ),
    )
    rows = ["normal", "busy-after", "busy-plain", "busy-forever", "ponder", "empty"]
    rows += ["boom", "stall", "cut", "long"]
    for row in rows:
        await create(stub, row)

    async def reply_text(message_id: str) -> str:
        processed = await wait_state(stub, message_id, pb.MESSAGE_STATE_PROCESSED, within=60)
        assert processed.last_error == "", processed
        assert processed.delivery_attempts == 1, processed
        [reply] = await list_all(stub, reply_to=message_id)
        assert reply.author == "ava"
        return reply.text

    assert await reply_text("normal") == answer_to("normal")
    # Busy three times: each hand-back gave its attempt back, or the second would be the last.
    assert await reply_text("busy-after") == answer_to("busy-after")
    assert await reply_text("busy-plain") == answer_to("busy-plain")
    assert await reply_text("ponder") == "A considered answer."
    assert [r.thinking_off for r in fake_llm.requests_for("ponder")] == [False, True]
    assert await reply_text("long") == "Once upon a time there was a" + CUT_MARKER

    async def dead(message_id: str) -> pb.Message:
        message = await wait_state(stub, message_id, pb.MESSAGE_STATE_DEAD, within=60)
        assert message.delivery_attempts == MAX_ATTEMPTS, message
        assert await list_all(stub, reply_to=message_id) == []
        return message

    empty = await dead("empty")
    assert empty.last_error == (
        "EmptyCompletion: no text (finish_reason=stop, 300 characters of reasoning), "
        "nor with thinking off (finish_reason=stop, 300 characters of reasoning)"
    )
    # Asked again in-process with thinking off, on each attempt.
    assert [r.thinking_off for r in fake_llm.requests_for("empty")] == [False, True] * MAX_ATTEMPTS

    boom = await dead("boom")
    chat_url = (
        f"{fake_llm.openai_url}/chat/completions"
        if backend == "openai"
        else (f"{fake_llm.url}/api/chat")
    )
    assert boom.last_error == f"LLMError: HTTP 500 from {chat_url}: model crashed"
    # The openai client retries once itself; the native client does not.
    per_attempt = 2 if backend == "openai" else 1
    assert len(fake_llm.requests_for("boom")) == per_attempt * MAX_ATTEMPTS

    stall = await dead("stall")
    assert stall.last_error == f"LLMError: no answer from {chat_url} within {TIMEOUT_SECONDS}s"

    cut = await dead("cut")
    assert cut.last_error.startswith(f"LLMError: connection to {chat_url} failed: "), cut.last_error

    # Rate limited on every request, for more rounds than it has attempts: never DEAD.
    async def busy_rounds() -> bool:
        return len(fake_llm.requests_for("busy-forever")) >= 2 * MAX_ATTEMPTS + 1

    await wait_until(busy_rounds, within=60, what="several busy rounds")
    forever = await get(stub, "busy-forever")
    assert forever.state in (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED), forever
    assert forever.delivery_attempts <= 1, forever
    assert forever.last_error == ""
    assert "attempt not counted" in bot.log_text()


@pytest.mark.parametrize("max_attempts", [1])
async def test_busy_never_makes_a_message_dead_with_a_single_attempt(stub, start_bot, fake_llm):
    """--max-attempts 1: a counted failure would make the message DEAD at once."""
    fake_llm.script("busy", *[Status(429)] * 4, Status(503, retry_after="1"), then=Reply())
    await start_bot(persona="ava", args=llm_args(fake_llm, "ollama"))
    await create(stub, "busy")
    processed = await wait_state(stub, "busy", pb.MESSAGE_STATE_PROCESSED, within=60)
    assert processed.delivery_attempts == 1
    assert processed.last_error == ""
    assert len(fake_llm.requests_for("busy")) == 6


async def test_a_slow_model_keeps_its_lease(stub, start_bot, fake_llm):
    """The model takes longer than two leases: the bot extends the lease meanwhile, so the
    message is never delivered again and the model is asked once."""
    lease = 2
    fake_llm.script("slow", Stall(3 * lease, then=Reply("Worth the wait.")))
    await start_bot(
        persona="ava",
        lease_seconds=lease,
        args=llm_args(fake_llm, "openai", "--llm-timeout-seconds", "30"),
    )
    await create(stub, "slow")
    processed = await wait_state(stub, "slow", pb.MESSAGE_STATE_PROCESSED, within=60)
    assert processed.delivery_attempts == 1
    [reply] = await list_all(stub, reply_to="slow")
    assert reply.text == "Worth the wait."
    assert len(fake_llm.requests_for("slow")) == 1
