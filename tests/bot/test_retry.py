"""Backoff with full jitter, the release delay, and the retry loop around a settling call."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from ackbot.bot.policy import to_incoming
from ackbot.client.channels import duration, reply_limit
from ackbot.client.delivery import failure_reason
from ackbot.client.retry import CALL_TIMEOUT_SECONDS, call_with_failover
from ackbot.common.backoff import RECONNECT_BACKOFF, Backoff, release_retry_after
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, MAX_REASON_CHARS
from ackbot.v1 import message_store_pb2 as pb


def test_the_ceiling_doubles_up_to_the_cap():
    backoff = Backoff(initial_seconds=0.1, cap_seconds=5.0)
    assert [backoff.ceiling(n) for n in range(8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )
    assert backoff.ceiling(10_000) == 5.0  # no overflow, however long the outage


def test_full_jitter_spans_zero_to_the_ceiling():
    backoff = Backoff(initial_seconds=1.0, cap_seconds=60.0)
    assert backoff.delay(3, rand=lambda: 0.0) == 0.0
    assert backoff.delay(3, rand=lambda: 0.5) == 4.0
    assert backoff.delay(3, rand=lambda: 0.999) == pytest.approx(7.992)
    assert all(0.0 <= backoff.delay(4) <= 16.0 for _ in range(1000))


def test_the_reconnect_backoff_starts_at_a_tenth_and_caps_at_five_seconds():
    assert RECONNECT_BACKOFF.ceiling(0) == 0.1
    assert RECONNECT_BACKOFF.ceiling(100) == 5.0


@pytest.mark.parametrize(
    ("attempt", "base", "expected"),
    [(1, 1.0, 1.0), (2, 1.0, 2.0), (5, 1.0, 16.0), (9, 1.0, 256.0), (10, 1.0, 300.0),
     (3, 0.5, 2.0), (1, 0.0, 0.0), (0, 1.0, 1.0), (10**6, 1.0, 300.0)],
)  # fmt: skip
def test_release_retry_after(attempt, base, expected):
    assert release_retry_after(attempt, base) == expected


def test_duration():
    assert (
        duration(2.5)
        == pb.ExtendLeaseRequest(lease_duration={"seconds": 2, "nanos": 500_000_000}).lease_duration
    )


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


class FakeTime:
    """A clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def run_retry(outcomes: list[object], budget: float = 60.0):
    """Runs call_with_failover over one store whose call fails or succeeds as `outcomes` says."""
    fake = FakeTime()
    timeouts: list[float] = []

    async def call(deadline_seconds: float) -> object:
        timeouts.append(deadline_seconds)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    result = await call_with_failover(
        [("the store", call)],
        what="Test",
        message_id="m-1",
        budget_seconds=budget,
        backoff=Backoff(1.0, 8.0),
        clock=fake.clock,
        sleep=fake.sleep,
        rand=lambda: 1.0,
    )
    return result, fake.sleeps, timeouts


async def test_unavailable_and_deadline_exceeded_are_retried_with_growing_pauses():
    result, sleeps, timeouts = await run_retry(
        [
            rpc_error(grpc.StatusCode.UNAVAILABLE),
            rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
            rpc_error(grpc.StatusCode.UNAVAILABLE),
            "ok",
        ]
    )
    assert result == "ok"
    assert sleeps == [1.0, 2.0, 4.0]
    assert timeouts == [CALL_TIMEOUT_SECONDS] * 4


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_other_codes_are_not_retried(code):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await run_retry([rpc_error(code), "never reached"])
    assert error.value.code() == code


async def test_retries_stop_when_the_budget_is_spent():
    outcomes = [rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(10)]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await run_retry(outcomes, budget=10.0)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(outcomes) == 10 - 4  # pauses 1, 2, 4 fit in 10 s; the next (8) would not


async def test_the_timeout_shrinks_with_the_budget_but_not_below_a_second():
    _, _, timeouts = await run_retry(
        [rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.UNAVAILABLE), "ok"],
        budget=3.5,
    )
    assert timeouts == [3.5, 2.5, 1.0]


async def run_failover(outcomes: dict[str, list[object]], budget: float = 60.0):
    """Runs call_with_failover over stores whose calls fail or succeed as `outcomes` says (per
    store, in order); returns the result, the pauses and the stores called, in order."""
    fake = FakeTime()
    called: list[str] = []

    def store(name: str):
        async def call(deadline_seconds: float) -> object:
            called.append(name)
            outcome = outcomes[name].pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return (name, call)

    result = await call_with_failover(
        [store(name) for name in outcomes],
        what="Test",
        message_id="m-1",
        budget_seconds=budget,
        backoff=Backoff(1.0, 8.0),
        clock=fake.clock,
        sleep=fake.sleep,
        rand=lambda: 1.0,
    )
    return result, fake.sleeps, called


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def test_a_store_that_is_unavailable_hands_the_call_to_the_next_at_once():
    result, sleeps, called = await run_failover(
        {"a": [rpc_error(UNAVAILABLE)], "b": [rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)],
         "c": ["ok"]}
    )  # fmt: skip
    assert result == "ok"
    assert called == ["a", "b", "c"]
    assert sleeps == []


async def test_only_a_round_in_which_every_store_failed_is_followed_by_a_pause():
    result, sleeps, called = await run_failover(
        {"a": [rpc_error(UNAVAILABLE)] * 3, "b": [rpc_error(UNAVAILABLE)] * 2 + ["ok"]}
    )
    assert result == "ok"
    # Each round starts again at the first store: the caller puts its best bet there.
    assert called == ["a", "b", "a", "b", "a", "b"]
    assert sleeps == [1.0, 2.0]


async def test_an_answer_retrying_cannot_change_is_final_and_not_asked_of_the_next_store():
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await run_failover({"a": [rpc_error(grpc.StatusCode.NOT_FOUND)], "b": ["never reached"]})
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_failover_stops_when_the_budget_is_spent():
    outcomes: dict[str, list[object]] = {name: [rpc_error(UNAVAILABLE)] * 10 for name in "abc"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await run_failover(outcomes, budget=10.0)
    assert error.value.code() == UNAVAILABLE
    # Four rounds of three calls: pauses 1, 2, 4 fit in 10 s; the next (8) would not.
    assert [len(left) for left in outcomes.values()] == [10 - 4] * 3


def test_failure_reason_names_the_exception_and_fits_the_store():
    assert failure_reason(RuntimeError("boom")) == "RuntimeError: boom"
    assert failure_reason(TimeoutError()) == "TimeoutError"
    long = failure_reason(ValueError("x\x00y" * 1000))
    assert len(long) == MAX_REASON_CHARS
    assert "\x00" not in long


def test_to_incoming():
    delivery = pb.Delivery(
        message=pb.Message(
            id="1761333653305-h0jgid21p",
            author="alice",
            text="hi",
            create_time={"seconds": 1761333653, "nanos": 306_000_000},
        ),
        lease_token="t",
        attempt=2,
    )
    message = to_incoming(delivery)
    assert message.id == "1761333653305-h0jgid21p"
    assert (message.author, message.text, message.attempt) == ("alice", "hi", 2)
    assert message.create_time == datetime(2025, 10, 24, 19, 20, 53, 306_000, tzinfo=UTC)
    assert to_incoming(pb.Delivery(message=pb.Message(id="x"))).create_time is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (grpc.aio.Metadata(("ackbot-max-text-bytes", "100")), 100),
        (grpc.aio.Metadata(), DEFAULT_MAX_TEXT_BYTES),  # a store too old to say
        (grpc.aio.Metadata(("ackbot-max-text-bytes", "lots")), DEFAULT_MAX_TEXT_BYTES),
        (grpc.aio.Metadata(("ackbot-max-text-bytes", "0")), DEFAULT_MAX_TEXT_BYTES),
        (None, DEFAULT_MAX_TEXT_BYTES),
    ],
)
def test_the_reply_limit_comes_from_the_streams_headers(headers, expected):
    assert reply_limit(headers) == expected
