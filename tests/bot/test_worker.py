"""The worker in-process against a real store (in the test's loop, real SQLite): what each kind of
answer leaves in the store, the lease kept alive across a slow reply, reconnection, and the
graceful stop. Outcomes are read back through the store's own RPCs."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time

import pytest

from ackbot.bot.config import BotConfig
from ackbot.bot.policy import MIN_BUSY_RETRY_SECONDS, Worker
from ackbot.bot.responder import (
    DependencyDown,
    EmptyCompletion,
    IncomingMessage,
    PersonaResponder,
    RetryLater,
)
from ackbot.common.limits import MAX_AUTHOR_CHARS
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .conftest import OldStore
from .helpers import (
    create,
    get,
    replies_to,
    running,
    wait_event,
    wait_state,
    wait_until,
)

PERSONA = "ava"


def bot_config(store, **options) -> BotConfig:
    settings = {
        "store": store.address,
        "persona": PERSONA,
        "consumer": "test-bot",
        "max_in_flight": 4,
        "lease_seconds": 30.0,
        "grace_seconds": 60.0,
        **options,
    }
    return BotConfig(**settings)


class Answers:
    """A responder that answers every message with a fixed text (or None)."""

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.seen: list[IncomingMessage] = []

    async def reply(self, message: IncomingMessage) -> str | None:
        self.seen.append(message)
        return self.text


class FailsFirst:
    """Raises on a message's first attempt; on the second it waits for `proceed`, then answers."""

    def __init__(self) -> None:
        self.failed_at: float | None = None
        self.second_at: float | None = None
        self.second_started = asyncio.Event()
        self.proceed = asyncio.Event()

    async def reply(self, message: IncomingMessage) -> str | None:
        if message.attempt == 1:
            self.failed_at = time.monotonic()
            raise RuntimeError("boom")
        self.second_at = time.monotonic()
        self.second_started.set()
        await self.proceed.wait()
        return "second time lucky"


class Gated:
    """Each message waits for its own gate: `started[id]` is set when its reply begins; setting
    `finish[id]` lets it answer, `fail[id]` makes it raise."""

    def __init__(self, ids: list[str]) -> None:
        self.started = {message_id: asyncio.Event() for message_id in ids}
        self.finish = {message_id: asyncio.Event() for message_id in ids}
        self.fail = {message_id: asyncio.Event() for message_id in ids}
        self.cancelled: set[str] = set()
        self.calls: collections.Counter[str] = collections.Counter()

    async def reply(self, message: IncomingMessage) -> str | None:
        self.calls[message.id] += 1
        self.started[message.id].set()
        finish = asyncio.create_task(self.finish[message.id].wait())
        fail = asyncio.create_task(self.fail[message.id].wait())
        try:
            await asyncio.wait({finish, fail}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancelled.add(message.id)
            raise
        finally:
            finish.cancel()
            fail.cancel()
        if self.fail[message.id].is_set():
            raise RuntimeError(f"{message.id} failed on purpose")
        return f"answer to {message.id}"


async def test_a_reply_is_stored_and_the_original_processed(any_store, stub):
    await create(stub, "m-1", "hello there")
    connection: list[bool] = []

    async def on_connection(up: bool) -> None:
        connection.append(up)

    persona = PersonaResponder(PERSONA)
    worker = Worker(bot_config(any_store), persona, on_connection=on_connection)
    async with running(worker):
        original = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
        assert connection == [True]

    assert connection == [True, False]
    [reply] = await replies_to(stub, "m-1")
    assert original.reply_id == reply.id
    assert original.delivery_attempts == 1
    assert reply.author == PERSONA
    assert reply.text == "Hello, tester! ava here. Good to hear from you."
    assert reply.state == pb.MESSAGE_STATE_PROCESSED


async def test_a_failing_responder_releases_the_message_with_a_clean_reason(any_store, stub):
    await create(stub, "m-1", "hello")
    # A long retry_after keeps the message PENDING for the rest of the test.
    worker = Worker(bot_config(any_store, retry_base_seconds=300.0), FailsFirst())

    async def released() -> pb.Message | None:
        message = await get(stub, "m-1")
        return message if message.last_error else None

    async with running(worker):
        message = await wait_until(released, what="the release with the failure's reason")
    assert message.state == pb.MESSAGE_STATE_PENDING
    assert message.last_error == "RuntimeError: boom"
    assert message.delivery_attempts == 1
    assert await replies_to(stub, "m-1") == []


async def test_a_failed_message_comes_back_after_retry_after_and_is_answered(store, stub):
    retry_base = 1.0  # the first failure waits retry_base * 2^0
    await create(stub, "m-1", "hello")
    responder = FailsFirst()
    worker = Worker(bot_config(store, retry_base_seconds=retry_base), responder)
    async with running(worker):
        await wait_event(responder.second_started, what="the second attempt")
        assert responder.failed_at is not None
        assert responder.second_at is not None
        # The store counts retry_after from the release, which came after the failure; a little
        # slack for the store's wall clock against our monotonic one.
        assert responder.second_at - responder.failed_at >= retry_base - 0.05
        during = await get(stub, "m-1")
        assert (during.state, during.delivery_attempts) == (pb.MESSAGE_STATE_LEASED, 2)
        assert during.last_error == "RuntimeError: boom"

        responder.proceed.set()
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.delivery_attempts == 2
    [reply] = await replies_to(stub, "m-1")
    assert reply.text == "second time lucky"


@pytest.mark.parametrize("silence", [None, ""])
async def test_a_responder_that_chooses_silence_processes_without_a_reply(store, stub, silence):
    await create(stub, "m-1", "hello")
    responder = Answers(silence)
    async with running(Worker(bot_config(store), responder)):
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.reply_id == ""
    assert processed.delivery_attempts == 1
    assert await replies_to(stub, "m-1") == []
    assert [message.id for message in responder.seen] == ["m-1"]


async def test_a_reply_over_the_stores_text_limit_is_cut_to_it(start_store, channels):
    store = await start_store(max_text_bytes=100)
    stub = pb_grpc.MessageStoreStub(channels(store.address))
    await create(stub, "m-1", "hello")
    # 160 bytes of UTF-8, two bytes a character: cut on a character boundary, then marked as
    # cut ("…", three bytes), within 100.
    async with running(Worker(bot_config(store), Answers("é" * 80))):
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.delivery_attempts == 1
    [reply] = await replies_to(stub, "m-1")
    assert reply.text == "é" * 48 + "…"
    assert len(reply.text.encode()) <= 100


async def test_a_reply_the_store_rejects_is_released_with_the_stores_reason(start_store, channels):
    # A persona the store refuses as a reply's author (the flag parser would refuse it too; a
    # BotConfig made in code is not checked). One attempt: the release makes the message DEAD.
    store = await start_store(max_attempts=1)
    stub = pb_grpc.MessageStoreStub(channels(store.address))
    await create(stub, "m-1", "hello")
    persona = "p" * (MAX_AUTHOR_CHARS + 1)
    async with running(Worker(bot_config(store, persona=persona), Answers("hi"))):
        dead = await wait_state(stub, "m-1", pb.MESSAGE_STATE_DEAD)
    assert dead.last_error == (
        "store rejected the reply: INVALID_ARGUMENT: "
        f"reply.author: must be at most {MAX_AUTHOR_CHARS} characters (got {MAX_AUTHOR_CHARS + 1})"
    )
    assert await replies_to(stub, "m-1") == []


async def test_the_lease_is_kept_alive_while_the_responder_takes_longer_than_the_lease(
    any_store, stub
):
    lease = 1.5
    await create(stub, "m-1", "hello")
    responder = Gated(["m-1"])
    async with running(Worker(bot_config(any_store, lease_seconds=lease), responder)):
        await wait_event(responder.started["m-1"], what="the reply to start")
        began = time.time()

        async def outlived_the_first_lease() -> bool:
            message = await get(stub, "m-1")
            assert message.state == pb.MESSAGE_STATE_LEASED, message
            assert message.delivery_attempts == 1, message
            # An expiry this late was set by an extension sent after the first lease ended.
            return message.lease_expire_time.ToNanoseconds() / 1e9 >= began + 2 * lease

        await wait_until(outlived_the_first_lease, what="extensions past the first lease")
        responder.finish["m-1"].set()
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.delivery_attempts == 1
    [reply] = await replies_to(stub, "m-1")
    assert reply.text == "answer to m-1"


async def test_the_worker_reconnects_when_the_store_comes_back(start_store, channels, tmp_path):
    db_url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    first = await start_store(db_url=db_url)
    connection: list[bool] = []
    went_down = asyncio.Event()

    async def on_connection(up: bool) -> None:
        connection.append(up)
        if not up:
            went_down.set()

    worker = Worker(bot_config(first), Answers("back again"), on_connection=on_connection)
    async with running(worker):
        await first.server.stop()
        await wait_event(went_down, what="the worker to notice the store is gone")
        # The same address and database, as a restarted store would have.
        second = await start_store(db_url=db_url, listen=first.address)
        await wait_until(lambda: worker.connected, what="the stream to open again")
        stub = pb_grpc.MessageStoreStub(channels(second.address))
        await create(stub, "m-1", "hello")
        await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert connection == [True, False, True, False]
    [reply] = await replies_to(stub, "m-1")
    assert reply.text == "back again"


async def test_graceful_stop_finishes_running_replies_and_hands_back_the_rest(
    any_store, stub, caplog
):
    """The reply to "a" runs through the stop and is stored; "b" fails during the drain, which
    makes room on the stream. On a Consume session the bot said "drain" first, so nothing
    fills that room and "c" keeps its attempt untouched. On a store without Consume the room
    is filled: "c" arrives at a worker that is stopping, never starts, and is handed back with
    an empty reason, which gives its attempt back."""
    caplog.set_level(logging.DEBUG, logger="ackbot.store")
    # Last: set_level also sets the capturing handler's level, and "received" lines are DEBUG.
    caplog.set_level(logging.DEBUG, logger="ackbot")
    for message_id in ("a", "b", "c"):
        await create(stub, message_id, f"message {message_id}")
    responder = Gated(["a", "b", "c"])
    # A long retry_after keeps "b" from being delivered again in place of "c".
    old = isinstance(any_store, OldStore)
    worker = Worker(bot_config(any_store, max_in_flight=2, retry_base_seconds=300.0), responder)

    def logged(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    async with running(worker):
        await wait_event(responder.started["a"], what='"a" to start')
        await wait_event(responder.started["b"], what='"b" to start')
        stopping = worker.stop()
        await wait_until(lambda: logged("stopping: 2 replies running"), what="the drain")

        responder.fail["b"].set()
        if old:
            await wait_until(lambda: logged("received message_id=c"), what='"c" to arrive')
        else:
            await wait_until(lambda: logged("released message_id=b"), what='"b" released')
        assert not responder.started["c"].is_set()

        responder.finish["a"].set()
        await asyncio.wait_for(stopping, 60)
    if not old:
        assert not logged("delivered message_id=c"), "c was never delivered"
        untouched = await get(stub, "c")
        assert (untouched.state, untouched.delivery_attempts) == (pb.MESSAGE_STATE_PENDING, 0)

    answered = await get(stub, "a")
    assert (answered.state, answered.delivery_attempts) == (pb.MESSAGE_STATE_PROCESSED, 1)
    [reply] = await replies_to(stub, "a")
    assert reply.text == "answer to a"
    failed = await get(stub, "b")
    assert (failed.state, failed.delivery_attempts) == (pb.MESSAGE_STATE_PENDING, 1)
    assert failed.last_error == "RuntimeError: b failed on purpose"

    assert not responder.started["c"].is_set()
    if not old:
        return
    assert logged("handed back unstarted delivery message_id=c")
    # The store's own account of the hand-back: the attempt given back, no reason kept. Its
    # state is not checked afterwards: the hand-back frees room on the stream, still open, and
    # the store may claim "c" again in the moment before the stream closes; a claim cut off by
    # the close leaves "c" LEASED, its attempt counted, until that lease expires.
    assert logged("released message_id=c state=PENDING attempts=0 reason=''")
    handed_back = await get(stub, "c")
    assert handed_back.last_error == ""
    assert await replies_to(stub, "c") == []


async def test_a_reply_still_running_after_the_grace_period_is_cancelled(store, stub):
    await create(stub, "m-1", "hello")
    responder = Gated(["m-1"])
    worker = Worker(bot_config(store, grace_seconds=0.1), responder)
    async with running(worker):
        await wait_event(responder.started["m-1"], what="the reply to start")
    assert responder.cancelled == {"m-1"}
    # No release: closing the stream gives the lease back (the store does it as it notices the
    # close), and the delivery counts as an attempt.
    message = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PENDING)
    assert message.delivery_attempts == 1
    assert message.last_error == ""
    assert await replies_to(stub, "m-1") == []


class BusyFirst:
    """Raises RetryLater (with `delay`) the first `times` times it is asked, then answers."""

    def __init__(self, times: int, delay: float | None) -> None:
        self.times = times
        self.delay = delay
        self.asked: list[tuple[int, float]] = []

    async def reply(self, message: IncomingMessage) -> str | None:
        self.asked.append((message.attempt, time.monotonic()))
        if len(self.asked) <= self.times:
            raise RetryLater("HTTP 429: slow down", self.delay)
        return "finally"


@pytest.mark.parametrize("delay", [0.2, None])
async def test_a_busy_backend_hands_the_message_back_without_counting_the_attempt(
    start_store, channels, delay
):
    # One attempt allowed: a counted failure would make the message DEAD at once.
    store = await start_store(max_attempts=1)
    stub = pb_grpc.MessageStoreStub(channels(store.address))
    await create(stub, "m-1", "hello")
    responder = BusyFirst(times=3, delay=delay)
    async with running(Worker(bot_config(store), responder)):
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.delivery_attempts == 1, "every busy answer gave its attempt back"
    assert processed.last_error == ""
    assert [attempt for attempt, _ in responder.asked] == [1, 1, 1, 1]
    [reply] = await replies_to(stub, "m-1")
    assert reply.text == "finally"
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(responder.asked)]
    if delay is not None:
        # The server's delay, counted by the store from the release (a little clock slack).
        assert min(gaps) >= delay - 0.05
    else:
        # A backoff of its own that grows: 0.5 s, 1 s, 2 s (MIN_BUSY_RETRY_SECONDS doubling).
        assert gaps[0] >= MIN_BUSY_RETRY_SECONDS - 0.05
        assert gaps[2] >= 4 * MIN_BUSY_RETRY_SECONDS - 0.05


class DownFirst:
    """Raises DependencyDown (to come back after `delay`) the first `times` times, then
    answers; asked by its own `asked` like BusyFirst."""

    def __init__(self, times: int, delay: float | None) -> None:
        self.times = times
        self.delay = delay
        self.asked: list[tuple[int, float]] = []

    async def reply(self, message: IncomingMessage) -> str | None:
        self.asked.append((message.attempt, time.monotonic()))
        if len(self.asked) <= self.times:
            raise DependencyDown(
                "the search API is down", cause="connect", delay_seconds=self.delay
            )
        return "finally"


@pytest.mark.parametrize("delay", [0.3, None])
async def test_a_dependency_down_is_handed_back_unstarted_quietly(
    start_store, channels, delay, caplog
):
    # One attempt allowed: a counted failure would make the message DEAD at once.
    store = await start_store(max_attempts=1)
    stub = pb_grpc.MessageStoreStub(channels(store.address))
    await create(stub, "m-1", "hello")
    responder = DownFirst(times=3, delay=delay)
    caplog.set_level(logging.DEBUG, logger="ackbot.bot.policy")
    async with running(Worker(bot_config(store), responder)):
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.delivery_attempts == 1, "every hand-back gave its attempt back"
    assert processed.last_error == ""
    assert [attempt for attempt, _ in responder.asked] == [1, 1, 1, 1]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(responder.asked)]
    if delay is not None:
        assert min(gaps) >= delay - 0.05  # the delay it named (the next probe), as the store counts
    else:
        # No delay named: back at once, not after the busy backoff (0.5 s doubling).
        assert max(gaps) < MIN_BUSY_RETRY_SECONDS
    # The breaker (or the responder) says it once; each hand-back is DEBUG, not a warning.
    handed = [r for r in caplog.records if "dependency down" in r.getMessage()]
    assert len(handed) == 3
    assert {r.levelno for r in handed} == {logging.DEBUG}
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and "m-1" in r.getMessage()
    ]


class Empty:
    async def reply(self, message: IncomingMessage) -> str | None:
        raise EmptyCompletion("no text (finish_reason=length, 512 characters of reasoning)")


async def test_an_empty_completion_is_a_counted_failure_with_its_cause(start_store, channels):
    store = await start_store(max_attempts=2)
    stub = pb_grpc.MessageStoreStub(channels(store.address))
    await create(stub, "m-1", "hello")
    async with running(Worker(bot_config(store, retry_base_seconds=0.05), Empty())):
        dead = await wait_state(stub, "m-1", pb.MESSAGE_STATE_DEAD)
    assert dead.delivery_attempts == 2
    assert dead.last_error == (
        "EmptyCompletion: no text (finish_reason=length, 512 characters of reasoning)"
    )
    assert await replies_to(stub, "m-1") == []


async def test_a_redelivery_of_a_running_reply_joins_it(start_store, channels, tmp_path, caplog):
    """The store goes away while three replies run and comes back on the same file and address:
    it hands the three messages out again, and each joins its running reply, which keeps and
    settles the new lease. The responder is asked once per message. The lease is short, so the
    keeper loses the old lease first and waits for the redelivery instead of giving up."""
    caplog.set_level(logging.DEBUG, logger="ackbot")
    lease = 2.0
    db_url = f"sqlite+aiosqlite:///{tmp_path}/joined.db"
    first = await start_store(db_url=db_url)
    stub = pb_grpc.MessageStoreStub(channels(first.address))
    ids = ["a", "b", "c"]
    for message_id in ids:
        await create(stub, message_id, f"message {message_id}")
    responder = Gated(ids)

    def logged(text: str) -> int:
        return sum(text in record.getMessage() for record in caplog.records)

    async with running(Worker(bot_config(first, lease_seconds=lease), responder)) as worker:
        for message_id in ids:
            await wait_event(responder.started[message_id], what=f"{message_id} to start")
        await first.server.stop()
        await wait_until(lambda: logged("the reply goes on") == len(ids), what="leases lost")
        assert not worker.connected

        second = await start_store(db_url=db_url, listen=first.address)
        stub = pb_grpc.MessageStoreStub(channels(second.address))
        await wait_until(lambda: logged("joined the running reply") == len(ids), what="joins")
        began = time.time()

        async def kept_past_two_leases() -> bool:
            for message_id in ids:
                message = await get(stub, message_id)
                assert (message.state, message.delivery_attempts) == (
                    pb.MESSAGE_STATE_LEASED,
                    2,
                ), message
                if message.lease_expire_time.ToNanoseconds() / 1e9 < began + 2 * lease:
                    return False
            return True

        # The keeper extends the new leases (with the new tokens), or they would lapse.
        await wait_until(kept_past_two_leases, what="the joined leases extended")
        for message_id in ids:
            responder.finish[message_id].set()
        for message_id in ids:
            processed = await wait_state(stub, message_id, pb.MESSAGE_STATE_PROCESSED)
            assert processed.delivery_attempts == 2
            [reply] = await replies_to(stub, message_id)
            assert reply.text == f"answer to {message_id}"
    assert responder.calls == dict.fromkeys(ids, 1), "one responder call per message"
    assert logged("duplicate prevented") == 0
    assert logged("abandoning") == 0


async def test_a_redelivery_after_a_failure_is_a_new_attempt(store, stub):
    # No delay before the retry: the redelivery may arrive while the failed job still releases.
    await create(stub, "m-1", "hello")
    responder = FailsFirst()
    async with running(Worker(bot_config(store, retry_base_seconds=0.0), responder)):
        await wait_event(responder.second_started, what="the second attempt")
        responder.proceed.set()
        processed = await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    assert processed.delivery_attempts == 2
