"""The model breaker as a state machine, on a fake clock: whose failure opens it, when it probes,
what it says, and what the guard tells the bot. No sleeps: the guard's sleep advances the clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ackbot.bot.breaker import (
    CAUSE_ERRORS,
    Breaker,
    Change,
    Decision,
    GuardedResponder,
    ModelGuard,
    State,
)
from ackbot.bot.llm import LLMError
from ackbot.bot.responder import (
    Blame,
    DependencyDown,
    EmptyCompletion,
    IncomingMessage,
    RetryLater,
    blame,
)

URL = "http://127.0.0.1:9/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def closed_breaker(clock: Clock, **options: object) -> Breaker:
    breaker = Breaker(URL, clock=clock, rand=lambda: 1.0, **options)  # type: ignore[arg-type]
    breaker.probe_succeeded()  # the start-up check passed
    return breaker


def suspect(detail: str = "HTTP 500 from x: boom") -> LLMError:
    return LLMError(detail, Blame.SUSPECT)


def down(cause: str = "connect") -> DependencyDown:
    return DependencyDown(f"cannot connect to {URL}: ConnectError", cause=cause, target=URL)


def test_blame_table() -> None:
    assert blame(down()) is Blame.DEPENDENCY
    assert blame(RetryLater("busy")) is Blame.BUSY
    assert blame(suspect()) is Blame.SUSPECT
    assert blame(LLMError("HTTP 400: context too long")) is Blame.MESSAGE
    assert blame(EmptyCompletion("no text")) is Blame.MESSAGE
    assert blame(ValueError("says nothing else")) is Blame.MESSAGE
    # A DependencyDown is a RetryLater: a loop that knows only RetryLater gives the attempt back.
    assert isinstance(down(), RetryLater)


def test_starts_half_open_until_the_first_check() -> None:
    breaker = Breaker(URL, clock=Clock())
    assert breaker.state is State.HALF_OPEN
    assert not breaker.taking_work
    assert URL in breaker.reason
    breaker.probe_succeeded()
    assert breaker.state is State.CLOSED
    assert breaker.reason == ""


def test_a_failed_start_up_check_opens_with_its_cause() -> None:
    breaker = Breaker(URL, clock=Clock(), rand=lambda: 1.0)
    breaker.probe_failed(down("auth"))
    assert breaker.state is State.OPEN
    assert breaker.cause == "auth"
    assert URL in breaker.reason


def test_dependency_down_opens_at_once() -> None:
    changes: list[Change] = []
    breaker = closed_breaker(Clock())
    breaker.add_listener(changes.append)
    assert breaker.failed("m1", down()) is Decision.HAND_BACK
    assert breaker.state is State.OPEN
    assert [(c.previous, c.state, c.cause) for c in changes] == [
        (State.CLOSED, State.OPEN, "connect")
    ]
    assert changes[0].url == URL


def test_one_poison_message_never_opens_it() -> None:
    breaker = closed_breaker(Clock(), window=3)
    for _ in range(10):
        # The same message failing again and again is one message, not several.
        assert breaker.failed("poison", suspect()) is Decision.SPEND
        breaker.succeeded("good")
    assert breaker.failed("poison", suspect()) is Decision.SPEND
    assert breaker.failed("poison", suspect()) is Decision.SPEND
    assert breaker.state is State.CLOSED


def test_suspect_failures_of_different_messages_in_a_row_open_it() -> None:
    breaker = closed_breaker(Clock(), window=3)
    assert breaker.failed("a", suspect()) is Decision.SPEND
    assert breaker.failed("b", suspect()) is Decision.SPEND
    assert breaker.state is State.CLOSED
    assert breaker.failed("c", suspect("no answer from x within 5s")) is Decision.HAND_BACK
    assert breaker.state is State.OPEN
    assert breaker.cause == CAUSE_ERRORS
    assert "3 different messages" in breaker.reason
    assert "within 5s" in breaker.reason
    # What was in flight and fails the same way now is handed back too.
    assert breaker.failed("d", suspect()) is Decision.HAND_BACK


@pytest.mark.parametrize(
    "between",
    [
        lambda b: b.succeeded("ok"),
        lambda b: b.failed("bad-request", LLMError("HTTP 400 from x: too long")),
    ],
)
def test_an_answer_in_between_starts_the_count_again(between) -> None:
    breaker = closed_breaker(Clock(), window=3)
    breaker.failed("a", suspect())
    breaker.failed("b", suspect())
    between(breaker)
    assert breaker.failed("c", suspect()) is Decision.SPEND
    assert breaker.failed("d", suspect()) is Decision.SPEND
    assert breaker.state is State.CLOSED


def test_busy_and_message_failures_leave_it_alone() -> None:
    breaker = closed_breaker(Clock(), window=1)
    assert breaker.failed("a", RetryLater("HTTP 429")) is Decision.BUSY
    assert breaker.failed("b", EmptyCompletion("no text")) is Decision.SPEND
    assert breaker.failed("c", KeyError("x")) is Decision.SPEND
    assert breaker.state is State.CLOSED


def test_probes_back_off_and_reset_only_on_an_answer() -> None:
    clock = Clock()
    breaker = closed_breaker(clock, probe_max_seconds=4.0)
    breaker.failed("a", down())
    waits = []
    for _ in range(6):
        waits.append(breaker.probe_in())
        clock.now += breaker.probe_in()
        assert breaker.probe_in() == 0
        breaker.probe_started()
        assert breaker.state is State.HALF_OPEN
        breaker.probe_failed(down())
        assert breaker.state is State.OPEN
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    breaker.probe_started()
    breaker.probe_succeeded()
    assert breaker.state is State.CLOSED
    # The list answers but the chat still fails: the backoff goes on from where it was.
    breaker.failed("b", down())
    assert breaker.probe_in() == 4.0
    breaker.probe_succeeded()
    breaker.succeeded("c")
    breaker.failed("d", down())
    assert breaker.probe_in() == 0.5


def test_one_log_line_per_change_naming_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ackbot.bot.breaker")
    clock = Clock()
    breaker = closed_breaker(clock)
    caplog.clear()
    breaker.failed("a", down())
    for _ in range(5):
        clock.now += breaker.probe_in()
        breaker.probe_started()
        breaker.probe_failed(down())
    breaker.probe_started()
    breaker.probe_succeeded()
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.levelname for r in loud] == ["WARNING", "INFO"]
    assert all(URL in r.getMessage() for r in loud)
    assert "connect" in loud[0].getMessage()


def test_a_refused_key_is_an_error_line(caplog: pytest.LogCaptureFixture) -> None:
    breaker = Breaker(URL, clock=Clock())
    breaker.probe_failed(down("auth"))
    (record,) = [r for r in caplog.records if r.name == "ackbot.bot.breaker"]
    assert record.levelno == logging.ERROR
    assert "auth" in record.getMessage()


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        Breaker(URL, window=0)


# -- the guard ---------------------------------------------------------------------------------


class Probe:
    """A probe that fails while `up` is False."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.up:
            raise down()


async def wait_for(condition, clock: Clock) -> None:
    """Yields to the guard's task until `condition()`; the guard's sleeps move the fake clock."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_guard_start_up_check_opens_and_probes_until_it_answers() -> None:
    clock = Clock()
    events: list[tuple[str, str]] = []

    async def on_open(change: Change) -> None:
        events.append(("open", change.cause))

    async def on_close(change: Change) -> None:
        events.append(("close", change.cause))

    probe = Probe()
    breaker = Breaker(URL, clock=clock, rand=lambda: 1.0)
    guard = ModelGuard(breaker, probe, on_open=on_open, on_close=on_close, sleep=clock.sleep)
    assert await guard.probe_once() is False
    task = asyncio.create_task(guard.run())
    try:
        await wait_for(lambda: probe.calls >= 4, clock)
        assert events == [("open", "connect")]
        assert not guard.closed.is_set()
        probe.up = True
        await wait_for(guard.closed.is_set, clock)
        assert events == [("open", "connect"), ("close", "probe")]
        started = clock.now
        # Closed: no probes, however long.
        calls = probe.calls
        for _ in range(100):
            await asyncio.sleep(0)
        assert probe.calls == calls
        assert clock.now == started
        # A failure while closed opens it again; the hooks run once more.
        breaker.failed("m", down())
        probe.up = False
        await wait_for(lambda: len(events) == 3, clock)
        assert events[-1] == ("open", "connect")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_guard_start_up_success_runs_on_close_once() -> None:
    clock = Clock()
    closes: list[Change] = []

    async def on_close(change: Change) -> None:
        closes.append(change)

    probe = Probe()
    probe.up = True
    guard = ModelGuard(Breaker(URL, clock=clock), probe, on_close=on_close, sleep=clock.sleep)
    assert await guard.probe_once() is True
    task = asyncio.create_task(guard.run())
    try:
        await wait_for(guard.closed.is_set, clock)
        assert len(closes) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_responder_without_probe_is_tried_again_after_the_backoff() -> None:
    clock = Clock()
    breaker = closed_breaker(clock)
    guard = ModelGuard(breaker, None, sleep=clock.sleep)
    breaker.failed("m", down())
    task = asyncio.create_task(guard.run())
    try:
        await wait_for(lambda: breaker.state is State.CLOSED, clock)
        assert clock.now >= 1000.5
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- the guarded responder ---------------------------------------------------------------------


class Scripted:
    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.asked: list[str] = []
        self.context_turns = 7

    async def reply(self, message: IncomingMessage) -> str | None:
        self.asked.append(message.id)
        if self.failure is not None:
            raise self.failure
        return f"re: {message.text}"


def incoming(message_id: str) -> IncomingMessage:
    return IncomingMessage(id=message_id, author="a", text="t", attempt=1)


async def test_guarded_responder_hands_back_the_models_failures() -> None:
    clock = Clock()
    breaker = closed_breaker(clock, window=2)
    inner = Scripted()
    guarded = GuardedResponder(inner, breaker)
    assert guarded.context_turns == 7  # the wrapped responder's attributes show through
    assert await guarded.reply(incoming("a")) == "re: t"

    inner.failure = suspect()
    with pytest.raises(LLMError):  # the first: the message's, the attempt counts
        await guarded.reply(incoming("b"))
    with pytest.raises(DependencyDown) as second:  # the second message in a row: the model's
        await guarded.reply(incoming("c"))
    assert second.value.delay_seconds is not None
    assert second.value.delay_seconds >= 1.0
    assert breaker.state is State.OPEN

    # Open: not asked at all, handed back to come back about when the next probe is due.
    asked = len(inner.asked)
    with pytest.raises(DependencyDown) as refused:
        await guarded.reply(incoming("d"))
    assert len(inner.asked) == asked
    assert URL in str(refused.value)
    assert refused.value.target == URL

    inner.failure = None
    breaker.probe_succeeded()
    assert await guarded.reply(incoming("d")) == "re: t"


def test_metrics_follow_the_breaker_and_count_tokens() -> None:
    from ackbot.bot.metrics import BotMetrics

    metrics = BotMetrics()
    breaker = Breaker(URL, clock=Clock())

    def count(change: Change) -> None:
        if change.notable:
            metrics.breaker_transition(change.state.value, change.cause)

    breaker.add_listener(count)
    registry = metrics.registry
    breaker.probe_succeeded()
    assert registry.get_sample_value("ackbot_bot_model_up") == 1
    breaker.failed("m", down("auth"))
    assert registry.get_sample_value("ackbot_bot_model_up") == 0
    for _ in range(3):  # failed probes: still the same open, not counted again
        breaker.probe_started()
        breaker.probe_failed(down("auth"))
    opened = registry.get_sample_value(
        "ackbot_bot_model_breaker_transitions_total", {"state": "open", "cause": "auth"}
    )
    assert opened == 1
    assert registry.get_sample_value("ackbot_bot_model_up") == 0
    metrics.tokens(3, 4)
    metrics.tokens(1, 0)
    kinds = {"prompt": 4, "completion": 4}
    for kind, count in kinds.items():
        assert registry.get_sample_value("ackbot_bot_model_tokens_total", {"kind": kind}) == count
