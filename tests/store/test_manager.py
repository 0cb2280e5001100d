"""MessageManager: the claim loop of each stream, the wake-ups that writes cause, stream end and
shutdown, on the real databases and the fake clock (whose timers fire when the test moves it).

Each stream runs in its own task, the way grpc runs a StreamUnprocessed handler, and puts its
batches on a queue. Every wait has a deadline; `let_streams_look` only paces (see there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from ackbot.store.errors import FailedPrecondition, MessageDeleted, StorageUnavailable
from ackbot.store.manager import DeliveryStream, MessageManager
from ackbot.store.models import State
from ackbot.store.repository import MessageRepository
from ackbot.store.types import Delivery, NewMessage
from ackbot.testing import wait_until

from .conftest import SECOND_NS, START_NS, FakeClock, Gate, count_events

DEADLINE = 5  # seconds, for anything the test waits for
LEASE_NS = 60 * SECOND_NS


class Consumer:
    """One open stream, consumed by a task of its own."""

    def __init__(
        self, manager: MessageManager, name: str, *, max_in_flight: int, lease_ns: int
    ) -> None:
        self.batches: asyncio.Queue[list[Delivery]] = asyncio.Queue()
        self.ended = False
        self.stream: DeliveryStream | None = None
        self.task = asyncio.create_task(self._run(manager, name, max_in_flight, lease_ns))

    async def _run(
        self, manager: MessageManager, name: str, max_in_flight: int, lease_ns: int
    ) -> None:
        async with manager.open_stream(
            name, max_in_flight=max_in_flight, lease_ns=lease_ns
        ) as stream:
            self.stream = stream
            async for batch in stream:
                self.batches.put_nowait(batch)
        self.ended = True

    async def next(self) -> list[Delivery]:
        async with asyncio.timeout(DEADLINE):
            return await self.batches.get()

    async def next_ids(self) -> list[str]:
        return [d.message.id for d in await self.next()]


OpenConsumer = Callable[..., Consumer]


@pytest.fixture
async def manager(repo: MessageRepository, clock: FakeClock) -> AsyncIterator[MessageManager]:
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    yield manager
    await manager.close_streams(handler_wait_seconds=DEADLINE)


@pytest.fixture
async def open_consumer(manager: MessageManager) -> AsyncIterator[OpenConsumer]:
    consumers: list[Consumer] = []

    def open_consumer(
        name: str = "bot", *, max_in_flight: int = 1, lease_ns: int = LEASE_NS
    ) -> Consumer:
        consumer = Consumer(manager, name, max_in_flight=max_in_flight, lease_ns=lease_ns)
        consumers.append(consumer)
        return consumer

    yield open_consumer
    await manager.close_streams(handler_wait_seconds=DEADLINE)
    async with asyncio.timeout(DEADLINE):
        outcomes = await asyncio.gather(*(c.task for c in consumers), return_exceptions=True)
    assert not [o for o in outcomes if not isinstance(o, asyncio.CancelledError | None)]


async def let_streams_look() -> None:
    """Gives woken streams the turns of the event loop they need to look for room.

    Enough for a stream that finds no room (or no reason to claim): it decides without the
    database. A stream that does claim is seen through its batch, which the tests wait for.
    """
    for _ in range(10):
        await asyncio.sleep(0)  # pacing


def hold_claims_open(repo: MessageRepository) -> Gate:
    """Makes every claim wait inside its transaction until the test opens the gate; its
    `reached` is set once one does."""
    gate = Gate()
    claim_rows = repo._leases.claim

    def claim_held_open(tx, claim):
        gate.wait_here()
        return claim_rows(tx, claim)

    repo._leases.claim = claim_held_open  # type: ignore[method-assign]
    return gate


async def create(manager: MessageManager, *ids: str) -> None:
    for message_id in ids:
        await manager.create_message(NewMessage(author="alice", text=message_id, id=message_id))


async def test_the_backlog_goes_out_oldest_first_in_batches_of_max_in_flight(
    manager, open_consumer, clock, caplog
):
    await create(manager, "a", "b", "c", "d", "e")
    with caplog.at_level(logging.DEBUG, logger="ackbot.store.manager"):
        consumer = open_consumer(max_in_flight=2)
        first = await consumer.next()
    assert [d.message.id for d in first] == ["a", "b"]
    for delivery in first:
        assert delivery.message.delivery_attempts == 1
        assert delivery.lease_expire_ns == clock.now_ns + LEASE_NS
        assert f"delivered message_id={delivery.message.id} attempt=1 consumer=bot" in caplog.text
    # Each settle frees one slot, and the next oldest message fills it.
    held = {d.message.id: d.lease_token for d in first}
    for settled, expected in [("a", "c"), ("b", "d"), ("c", "e")]:
        await manager.mark_processed(settled, None, held.pop(settled))
        (delivery,) = await consumer.next()
        assert delivery.message.id == expected
        held[expected] = delivery.lease_token


async def test_a_create_wakes_a_waiting_stream(manager, open_consumer):
    consumer = open_consumer(max_in_flight=3)
    await let_streams_look()
    assert consumer.batches.empty()

    await create(manager, "new")

    assert await consumer.next_ids() == ["new"]


async def test_a_batch_create_wakes_a_waiting_stream_once_for_all(manager, open_consumer):
    consumer = open_consumer(max_in_flight=10)
    await let_streams_look()
    news = [NewMessage(author="a", text="t", id=f"b{n}") for n in range(5)]

    outcomes = await manager.create_messages([*news, NewMessage(author="x", text="y", id="b0")])

    assert [type(o).__name__ for o in outcomes] == [*["CreateResult"] * 5, "AlreadyExists"]
    # The wake comes after the one commit: the stream claims all five in one batch.
    assert await consumer.next_ids() == [f"b{n}" for n in range(5)]


async def test_a_settle_frees_a_slot(manager, open_consumer):
    await create(manager, "a", "b")
    consumer = open_consumer(max_in_flight=1)
    (a,) = await consumer.next()
    await let_streams_look()
    assert consumer.batches.empty()  # "b" waits for a slot

    await manager.mark_processed("a", NewMessage(author="bot", text="hi"), a.lease_token)

    assert await consumer.next_ids() == ["b"]


async def test_deleting_a_leased_message_frees_its_slot(manager, open_consumer):
    await create(manager, "a", "b")
    consumer = open_consumer(max_in_flight=1)
    (a,) = await consumer.next()
    await let_streams_look()
    assert consumer.batches.empty()  # "b" waits for a slot

    deleted = await manager.delete("a")

    assert deleted.message.state is State.DELETED
    assert await consumer.next_ids() == ["b"]
    # The holder's late answer settles nothing more: "b" keeps its slot.
    with pytest.raises(MessageDeleted):
        await manager.mark_processed("a", NewMessage(author="bot", text="late"), a.lease_token)


async def test_held_messages_wait_for_approval(repo, clock):
    holding = MessageManager(repo, clock_ns=clock, hold_new_messages=True)
    held = await holding.create_message(NewMessage(author="ana", text="x", id="h"))
    free = await holding.create_message(NewMessage(author="ana", text="y", id="f", hold=False))
    assert (held.message.state, free.message.state) == (State.HELD, State.PENDING)
    await holding.approve("h")
    assert (await holding.get_message("h")).state is State.PENDING


async def test_a_settle_without_new_work_does_not_claim_again(manager, open_consumer, repo):
    claims: list[int] = []
    claim = repo.claim

    async def counting_claim(limit: int, lease_ns: int) -> list[Delivery]:
        claims.append(limit)
        return await claim(limit, lease_ns)

    repo.claim = counting_claim
    await create(manager, "a")
    consumer = open_consumer(max_in_flight=2)
    (a,) = await consumer.next()  # a short claim: the queue is empty now
    assert claims == [2]

    await manager.mark_processed("a", None, a.lease_token)
    await let_streams_look()

    assert claims == [2]  # room, but nothing made new work: no empty write transaction
    await create(manager, "b")
    assert await consumer.next_ids() == ["b"]
    assert claims == [2, 2]


async def test_a_lapsed_lease_keeps_its_slot_until_answered_with_its_token(
    manager, open_consumer, clock
):
    await create(manager, "a", "b")
    hung = open_consumer("hung", max_in_flight=1, lease_ns=SECOND_NS)
    (first,) = await hung.next()
    assert first.message.id == "a"

    clock.advance(1)  # the lease lapses; its expiry wakes the streams
    await let_streams_look()
    assert hung.batches.empty()  # the hung stream's slot stays taken

    other = open_consumer("other", max_in_flight=1)
    (again,) = await other.next()
    assert (again.message.id, again.message.delivery_attempts) == ("a", 2)
    # The other bot's answer carries its own token: the hung stream's slot stays taken.
    await manager.mark_processed("a", NewMessage(author="bot", text="hi"), again.lease_token)
    assert await other.next_ids() == ["b"]
    await create(manager, "c")
    await let_streams_look()
    assert hung.batches.empty()

    # The hung stream's client answers late, with its own token: its slot is free again.
    late = await manager.mark_processed("a", None, first.lease_token)

    assert late.already_processed
    assert await hung.next_ids() == ["c"]


@pytest.mark.parametrize("answer", ["release", "extend"])
async def test_a_refused_answer_with_the_lapsed_token_frees_the_slot(
    manager, open_consumer, clock, answer
):
    await create(manager, "a")
    hung = open_consumer("hung", max_in_flight=1, lease_ns=SECOND_NS)
    (first,) = await hung.next()
    clock.advance(1)
    other = open_consumer("other", max_in_flight=1)
    assert await other.next_ids() == ["a"]
    await create(manager, "b")
    await let_streams_look()
    assert hung.batches.empty()

    if answer == "release":
        refused = manager.release("a", first.lease_token, reason="", retry_after_ns=0)
    else:
        refused = manager.extend_lease("a", first.lease_token, LEASE_NS)
    with pytest.raises(FailedPrecondition):
        await refused

    # The lease is gone, but its client has answered for it.
    assert await hung.next_ids() == ["b"]


async def test_an_extension_moves_the_expiry_wake(manager, open_consumer, clock):
    await create(manager, "a")
    slow = open_consumer("slow", max_in_flight=1, lease_ns=SECOND_NS)
    (a,) = await slow.next()
    other = open_consumer("other", max_in_flight=1)

    extended = await manager.extend_lease("a", a.lease_token, 5 * SECOND_NS)

    assert extended.lease_expire_ns == START_NS + 5 * SECOND_NS
    clock.advance(1)  # the first expiry passes: the lease holds
    await let_streams_look()
    assert other.batches.empty()
    clock.advance(4)  # the extended expiry: the wake comes, and the message goes out again
    (again,) = await other.next()
    assert (again.message.id, again.message.delivery_attempts) == ("a", 2)


async def test_a_release_with_retry_after_wakes_the_streams_when_it_ends(
    manager, open_consumer, clock
):
    await create(manager, "a")
    consumer = open_consumer(max_in_flight=2)
    (a,) = await consumer.next()

    released = await manager.release(
        "a", a.lease_token, reason="model timed out", retry_after_ns=5 * SECOND_NS
    )

    assert released.state is State.PENDING
    # The wake is set on the store's clock, not the machine's.
    assert clock.timers == [START_NS + 5 * SECOND_NS]
    clock.advance(ns=5 * SECOND_NS - 1)
    await let_streams_look()
    assert consumer.batches.empty()
    clock.advance(ns=1)
    (again,) = await consumer.next()
    assert (again.message.id, again.message.last_error) == ("a", "model timed out")


async def test_a_release_without_retry_after_wakes_the_streams_at_once(manager, open_consumer):
    await create(manager, "a")
    # Its claim comes back short, so only a wake that says "new work" makes it claim again.
    first = open_consumer("first", max_in_flight=2)
    (a,) = await first.next()
    second = open_consumer("second", max_in_flight=1)
    await let_streams_look()
    assert second.batches.empty()

    await manager.release("a", a.lease_token, reason="", retry_after_ns=0)

    # Whichever stream claims first gets it; the attempt was given back.
    either = asyncio.create_task(first.next())
    second_batch = asyncio.create_task(second.next())
    done, pending = await asyncio.wait(
        [either, second_batch], timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    (batch,) = [task.result() for task in done]
    assert [(d.message.id, d.message.delivery_attempts) for d in batch] == [("a", 1)]


async def test_a_requeue_wakes_the_streams(make_repo, clock):
    repo = await make_repo(max_attempts=1)
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    await create(manager, "poison")
    consumer = Consumer(manager, "bot", max_in_flight=1, lease_ns=LEASE_NS)
    try:
        (delivery,) = await consumer.next()
        dead = await manager.release(
            "poison", delivery.lease_token, reason="boom", retry_after_ns=0
        )
        assert dead.state is State.DEAD
        await let_streams_look()
        assert consumer.batches.empty()

        await manager.requeue("poison")

        (again,) = await consumer.next()
        assert (again.message.id, again.message.delivery_attempts) == ("poison", 1)
    finally:
        await manager.close_streams(handler_wait_seconds=DEADLINE)
        async with asyncio.timeout(DEADLINE):
            await consumer.task


async def test_start_wakes_the_streams_for_a_lease_left_by_a_previous_run(
    repo, open_consumer, manager, clock
):
    await repo.create_message(NewMessage(author="alice", text="left", id="left"))
    (previous,) = await repo.claim(1, 3 * SECOND_NS)  # a store that is gone leased it

    await manager.start()

    assert clock.timers == [previous.lease_expire_ns]
    consumer = open_consumer()
    await let_streams_look()
    assert consumer.batches.empty()
    clock.advance(3)
    (again,) = await consumer.next()
    assert (again.message.id, again.message.delivery_attempts) == ("left", 2)


async def test_a_stream_that_ends_releases_its_leases_at_once(manager, repo, caplog):
    await create(manager, "a", "b", "c")

    with caplog.at_level(logging.DEBUG, logger="ackbot.store.manager"):
        async with manager.open_stream("bot", max_in_flight=2, lease_ns=LEASE_NS) as stream:
            batch = await anext(stream)
            assert [d.message.id for d in batch] == ["a", "b"]

    for message_id in ("a", "b"):
        message = await repo.get_message(message_id)
        assert (message.state, message.delivery_attempts) == (State.PENDING, 1)
        assert f"lease released on stream end message_id={message_id}" in caplog.text
    assert "stream closed consumer=bot releasing=2" in caplog.text
    # No waiting for the leases to expire: the next stream gets them now.
    async with manager.open_stream("next", max_in_flight=3, lease_ns=LEASE_NS) as stream:
        batch = await anext(stream)
    assert [(d.message.id, d.message.delivery_attempts) for d in batch] == [
        ("a", 2),
        ("b", 2),
        ("c", 1),
    ]


async def test_a_cancelled_stream_still_releases_its_leases(manager, open_consumer, repo):
    await create(manager, "a")
    consumer = open_consumer()
    assert await consumer.next_ids() == ["a"]
    await let_streams_look()  # the stream waits for room

    consumer.task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(DEADLINE):
            await consumer.task

    message = await repo.get_message("a")
    assert (message.state, message.delivery_attempts) == (State.PENDING, 1)


async def test_shutdown_ends_every_stream_and_waits_for_their_leases(manager, open_consumer, repo):
    await create(manager, "a", "b", "c")
    consumers = [open_consumer(f"bot{i}", max_in_flight=1) for i in range(3)]
    delivered = sorted([(await c.next())[0].message.id for c in consumers])
    assert delivered == ["a", "b", "c"]

    await manager.close_streams(handler_wait_seconds=DEADLINE)

    # Every stream's iteration ended (it was not cancelled), and its task is done.
    assert all(c.ended and c.task.done() for c in consumers)
    for message_id in delivered:
        message = await repo.get_message(message_id)
        assert (message.state, message.delivery_attempts) == (State.PENDING, 1)
    await manager.close_streams(handler_wait_seconds=DEADLINE)  # a second call is harmless


async def test_a_stream_cancelled_while_its_claim_commits_still_releases_what_it_claimed(
    manager, open_consumer, repo
):
    # The claim is inside its transaction when the client goes away: group commit finishes it
    # regardless, so the message is leased to a stream that is ending.
    gate = hold_claims_open(repo)
    await create(manager, "a")
    consumer = open_consumer()
    async with asyncio.timeout(DEADLINE):
        await gate.reached.wait()

    consumer.task.cancel()  # the client went away mid-claim
    await let_streams_look()
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(DEADLINE):
            await consumer.task

    # Once the claim has committed, its lease was released at the stream's end, not left
    # LEASED until it expires.
    async with asyncio.timeout(DEADLINE):
        # The commit happens in group commit's writer: nothing to wait on but the database.
        while (message := await repo.get_message("a")).delivery_attempts == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # poll
    assert (message.state, message.delivery_attempts) == (State.PENDING, 1)


async def test_a_drained_stream_claims_no_more_and_gives_back_a_claim_it_was_running(
    manager, open_consumer, repo
):
    gate = hold_claims_open(repo)
    await create(manager, "a", "b")
    consumer = open_consumer(max_in_flight=1)
    async with asyncio.timeout(DEADLINE):
        await gate.reached.wait()
    assert consumer.stream is not None
    consumer.stream.drain()  # the drain comes while the claim of "a" commits
    gate.open()
    async with asyncio.timeout(DEADLINE):
        while (message := await repo.get_message("a")).state is not State.PENDING:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # poll: the give-back commits in group commit's writer
    assert message.delivery_attempts == 0, "handed back unstarted: the attempt is given back"
    await create(manager, "c")
    await let_streams_look()
    assert consumer.batches.empty()
    assert (await repo.get_message("b")).delivery_attempts == 0


async def test_a_raised_window_claims_at_once_and_a_lowered_one_waits(manager, open_consumer):
    await create(manager, "a", "b", "c", "d")
    consumer = open_consumer(max_in_flight=1)
    (a,) = await consumer.next()
    assert consumer.stream is not None
    consumer.stream.set_max_in_flight(3)
    assert await consumer.next_ids() == ["b", "c"]
    consumer.stream.set_max_in_flight(1)
    await manager.mark_processed("a", None, a.lease_token)
    await let_streams_look()
    assert consumer.batches.empty(), "two still out, above the window of one"


async def test_a_short_claim_reads_the_next_timed_wake_only_from_a_shared_database(
    manager, open_consumer, repo
):
    reads: list[int | None] = []
    next_visible_ns = repo.next_visible_ns

    async def counting_next_visible_ns() -> int | None:
        reads.append(await next_visible_ns())
        return reads[-1]

    repo.next_visible_ns = counting_next_visible_ns
    await create(manager, "a")
    consumer = open_consumer(max_in_flight=2)
    (a,) = await consumer.next()  # a short claim

    if repo.shared:  # PostgreSQL: another store's lease may lapse first
        await wait_until(lambda: reads, DEADLINE, interval=0.01)
        assert reads[0] == a.lease_expire_ns
    else:  # SQLite: every lease is this store's, and the board already wakes for it
        await let_streams_look()
        assert reads == []


async def test_stats_count_lapsed_leases_as_pending_and_keep_their_slots(
    manager, open_consumer, clock
):
    """GetStats' numbers: a lapsed lease is PENDING in the counts, as every read shows it, but
    still takes its slot on the stream that has not answered for it."""
    await create(manager, "a", "b", "c")
    created_ns = clock()
    bot = open_consumer("bot-1", max_in_flight=2, lease_ns=SECOND_NS)
    assert sorted(await bot.next_ids()) == ["a", "b"]
    clock.advance(0.5)

    stats = await manager.stats()
    assert (stats.counts["PENDING"], stats.counts["LEASED"]) == (1, 2)
    assert (stats.counts["PROCESSED"], stats.counts["DEAD"]) == (0, 0)
    assert stats.oldest_pending_ns == created_ns  # c, whose wait is what the age shows
    [stream] = stats.streams
    assert (stream.consumer, stream.in_flight, stream.max_in_flight) == ("bot-1", 2, 2)
    assert stream.lease_ns == SECOND_NS
    assert stats.read_ns == clock()

    clock.advance(1)  # both leases lapse
    stats = await manager.stats()
    assert (stats.counts["PENDING"], stats.counts["LEASED"]) == (3, 0)
    assert stats.streams[0].in_flight == 2


async def test_stats_with_nothing_stored(manager):
    stats = await manager.stats()
    assert stats.counts == {
        "PENDING": 0,
        "LEASED": 0,
        "PROCESSED": 0,
        "DEAD": 0,
        "HELD": 0,
        "DELETED": 0,
    }
    assert stats.oldest_pending_ns is None
    assert stats.streams == []


# -- claim on create ----------------------------------------------------------------------------


async def streams_idle(manager: MessageManager, count: int) -> None:
    """Waits until `count` streams are open with no claim in flight (their first, empty claim
    has committed): a create may then claim for them."""
    await wait_until(
        lambda: (
            len(manager._board.streams) == count
            and not any(s.claiming for s in manager._board.streams)
        ),
        DEADLINE,
        interval=0.01,
        what=f"{count} streams waiting",
    )


async def test_a_create_leases_its_message_to_a_waiting_stream_in_the_same_transaction(
    manager, open_consumer, repo
):
    consumer = open_consumer(max_in_flight=2)
    await streams_idle(manager, 1)
    committed = count_events(repo, "commit")

    await create(manager, "new")
    (delivery,) = await consumer.next()

    assert delivery.message.id == "new"
    assert delivery.message.delivery_attempts == 1
    assert committed[0] == 1  # the create and its claim: no claim transaction of its own
    stored = await repo.get_message("new")
    assert (stored.state, stored.lease_expire_ns) == (State.LEASED, delivery.lease_expire_ns)


async def test_a_create_finds_no_stream_without_room(manager, open_consumer, repo):
    await create(manager, "a")
    consumer = open_consumer(max_in_flight=1)
    (a,) = await consumer.next()
    await streams_idle(manager, 1)

    await create(manager, "b")
    await let_streams_look()

    assert consumer.batches.empty()
    assert (await repo.get_message("b")).state is State.PENDING
    await manager.mark_processed("a", None, a.lease_token)
    assert await consumer.next_ids() == ["b"]


async def test_new_messages_spread_over_the_waiting_streams(manager, open_consumer):
    first, second = open_consumer("one", max_in_flight=2), open_consumer("two", max_in_flight=2)
    await streams_idle(manager, 2)

    await create(manager, "a")
    await create(manager, "b")

    got = [await first.next_ids(), await second.next_ids()]
    assert sorted(got) == [["a"], ["b"]]


async def test_a_stream_cancelled_while_a_create_claims_for_it_releases_the_lease(
    manager, open_consumer, repo
):
    consumer = open_consumer()
    await streams_idle(manager, 1)
    gate = hold_claims_open(repo)
    creating = asyncio.create_task(create(manager, "a"))
    async with asyncio.timeout(DEADLINE):
        await gate.reached.wait()

    consumer.task.cancel()  # the client goes away while the create's transaction claims for it
    await let_streams_look()
    gate.open()
    async with asyncio.timeout(DEADLINE):
        await creating
        with pytest.raises(asyncio.CancelledError):
            await consumer.task

    # The stream's end waited for the claim, and released what it leased.
    message = await repo.get_message("a")
    assert (message.state, message.delivery_attempts) == (State.PENDING, 1)
    assert consumer.batches.empty()


async def test_a_create_whose_claim_fails_leaves_the_message_to_the_streams(
    manager, open_consumer, repo
):
    consumer = open_consumer(max_in_flight=2)
    await streams_idle(manager, 1)
    claim = repo.claim
    failed: list[int] = []

    async def failing_once(limit: int, lease_ns: int) -> list[Delivery]:
        if not failed:
            failed.append(limit)
            raise StorageUnavailable("the claim's transaction failed")
        return await claim(limit, lease_ns)

    repo.claim = failing_once
    await create(manager, "a")

    # The stream was woken and claimed by itself: no lost wake-up, and it stays open.
    assert await consumer.next_ids() == ["a"]
    assert failed == [2]


async def test_a_create_claims_only_for_a_stream_whose_iteration_waits(manager, repo):
    # A handler suspended elsewhere (sending, or dropped by its client and not yet finalized)
    # is not asking for work: a create leaves its message to the streams that are.
    async with manager.open_stream("busy", max_in_flight=5, lease_ns=LEASE_NS):
        await create(manager, "a")
        await let_streams_look()
        assert (await repo.get_message("a")).state is State.PENDING
