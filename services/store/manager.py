"""Delivery's one owner, between the servicer (gRPC) and the repository (SQL).

`MessageManager` does every write and tells what it changed, runs the claim loop of each open
stream, releases a stream's leases when it ends, and ends every stream on shutdown.
Procrastinate's manager is the model: the servicer validates, makes one call here, and maps the
answer to protobuf; nothing here knows gRPC, and nothing here writes SQL.

What a write changed comes back from the repository as one record (`Changes`, types.py), and
`_committed` alone turns it into wake-ups, watch events, metrics and log lines, whoever made the
write. A method here adds only what concerns its caller's stream: a settle frees a slot on it,
a create may lease its message to a waiting stream in its own transaction (claim on create).

Each stream's state is its own (stream.py), changed through its transitions; what spans the
streams (which lease each holds, the timed wakes) is the board's (stream_board.py).

On a database other stores share (PostgreSQL), work also appears that no write of this store
made: another store's create or release, a lease it granted that lapses. `work_made_elsewhere`
is the one way in for that news (another store's notification, the fallback poll, a reaper),
and the timed wakes are read from the database then and after every claim that came back short,
so they cover every store's leases and retry_afters, not only ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from ackbot.store.errors import FailedPrecondition, MessageDeleted, StoreError
from ackbot.store.metrics import StoreMetrics
from ackbot.store.models import State
from ackbot.store.repository import MessageRepository
from ackbot.store.stream import DeliveryStream, Stream
from ackbot.store.stream_board import WAKE_STEP_NS, CallAt, StreamBoard
from ackbot.store.tables.removal import Removal
from ackbot.store.types import (
    REDELIVERY_CAUSES,
    Cause,
    Changes,
    CreateResult,
    DeleteResult,
    Delivery,
    Lease,
    MarkResult,
    NewMessage,
    StoredMessage,
    StoreStats,
    StreamStats,
)
from ackbot.store.watch import WatchEvent, WatchHub

__all__ = ["DeliveryStream", "MessageManager", "StoreStats", "StreamStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a request to read the next timed wake waits for company: the claims that the same
# news sets off run first, without a read beside them, and those that come back short share the
# read instead of queueing one each (timed wakes are this coarse anyway).
REARM_DELAY_SECONDS = WAKE_STEP_NS / 1e9


def _stored_new(result: CreateResult) -> bool:
    """Whether a create stored a new message (work for the streams); a retried one is logged."""
    if result.already_existed:
        log.debug("create retried; already stored message_id=%s", result.message.id)
        return False
    return True


class MessageManager:
    """Every write with its wake-up, every stream's deliveries, and their end on shutdown.

    `clock_ns` is the store's clock (the repository's too); `call_at` runs timed wakes on it
    (see StreamBoard), by default on the event loop.
    """

    def __init__(
        self,
        repository: MessageRepository,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        call_at: CallAt | None = None,
        metrics: StoreMetrics | None = None,
        hold_new_messages: bool = False,
    ) -> None:
        self._metrics = metrics
        # A create that leaves `hold` unset is HELD when this is set (--hold-new-messages).
        self._hold_new_messages = hold_new_messages
        self._repository = repository
        self._now_ns = clock_ns
        self._board = StreamBoard(clock_ns, call_at, on_lapse=self._lease_lapsed)
        # Told of every change this store makes, for WatchMessages; costs nothing unwatched.
        self.watches = WatchHub(repository)
        # What each write changed reaches the streams, the watches, the metrics and the log
        # through one door (_committed), whichever write and whichever caller made it.
        repository.report_changes_to(self._committed)
        self._lease_releases: set[asyncio.Task[None]] = set()
        # Claims in flight, each in a task of its own (see _start_claim), by stream.
        self._claims: dict[Stream, asyncio.Task[None]] = {}
        # The tasks that run open streams (grpc's StreamUnprocessed and Consume handlers):
        # shutdown waits for them to finish sending their status while the server can still
        # send it.
        self._stream_tasks: set[asyncio.Task[object]] = set()
        # Reading the next timed wake from the database (shared databases only): one read at
        # a time, and a request made during one is served by the next.
        self._rearm_task: asyncio.Task[None] | None = None
        self._rearm_wanted = False
        self._closed = False

    def _lease_lapsed(self) -> None:
        if self._metrics is not None:
            self._metrics.redelivery("lease_expired")

    async def start(self) -> None:
        """Schedules a wake for the first message that becomes deliverable later (a lease or a
        retry_after left by a previous run), since no write of ours will announce it."""
        next_visible = await self._repository.next_visible_ns()
        if next_visible is not None:
            self._board.wake_at(next_visible)

    # -- reads -------------------------------------------------------------------------------

    async def get_message(self, message_id: str) -> StoredMessage:
        return await self._repository.get_message(message_id)

    async def list_messages(
        self,
        *,
        after_sequence: int,
        before_sequence: int | None,
        newest_first: bool,
        limit: int,
        state: State | None,
        reply_to: str | None,
        conversation_id: str | None = None,
    ) -> list[StoredMessage]:
        return await self._repository.list_messages(
            after_sequence=after_sequence,
            before_sequence=before_sequence,
            newest_first=newest_first,
            limit=limit,
            state=state,
            reply_to=reply_to,
            conversation_id=conversation_id,
        )

    async def stats(self) -> StoreStats:
        counts, oldest_pending_ns = await self._repository.sample_states()
        streams = [
            StreamStats(
                consumer=stream.consumer,
                max_in_flight=stream.max_in_flight,
                in_flight=stream.max_in_flight - self._board.room(stream),
                lease_ns=stream.lease_ns,
            )
            for stream in self._board.streams
        ]
        streams.sort(key=lambda stream: stream.consumer)
        return StoreStats(
            counts=counts,
            oldest_pending_ns=oldest_pending_ns,
            streams=streams,
            store_id=self._repository.store_id,
            read_ns=self._now_ns(),
        )

    # -- writes ------------------------------------------------------------------------------
    # Each write's wake-ups, watch events, metrics and log lines come from the record of what
    # it changed (_committed); a method here adds only what is about its caller: the stream
    # whose slot a settle frees, a claim riding with a create.

    def _held_or_not(self, new: NewMessage) -> NewMessage:
        if new.hold is None:
            return dataclasses.replace(new, hold=self._hold_new_messages)
        return new

    async def create_message(self, new: NewMessage) -> CreateResult:
        new = self._held_or_not(new)
        return await self._create(self._repository.create_message(new), _stored_new)

    async def create_messages(self, news: list[NewMessage]) -> list[CreateResult | StoreError]:
        """CreateMessage for many, in one transaction, with one wake-up for all of them. Each
        item's outcome is its own: a result, or the error it alone was refused with."""

        def any_stored(outcomes: list[CreateResult | StoreError]) -> bool:
            # Every result is looked at: a list, not a generator that any() would cut short.
            return any([_stored_new(o) for o in outcomes if not isinstance(o, StoreError)])

        news = [self._held_or_not(new) for new in news]
        return await self._create(self._repository.create_messages(news), any_stored)

    async def _create(self, write: Awaitable[T], stored_new: Callable[[T], bool]) -> T:
        """Runs a create (`write`, not yet started) with claim on create: a stream waiting with
        room gets a claim queued right behind it. Group commit runs claims last in a
        transaction, and the claim can only land in the create's transaction or a later one,
        so it sees the new messages: they are leased in the transaction that stores them,
        without a claim transaction of their own. The claim then decides who else must look
        (see _claim_for); a create that found no stream waiting wakes them all, as any work
        does. `stored_new` says whether the outcome stored anything new."""
        waiting = self._board.waiting_stream()
        if waiting is not None:
            self._start_claim(*waiting, rides_with_create=True)
        outcome = await write
        if stored_new(outcome) and waiting is None:
            self._board.wake_all()
        return outcome

    async def mark_processed(
        self,
        message_id: str,
        reply: NewMessage | None,
        lease_token: str,
        *,
        context_sequence: int = 0,
    ) -> MarkResult:
        try:
            result = await self._repository.mark_processed(
                message_id, reply, lease_token, context_sequence=context_sequence
            )
        except MessageDeleted:
            # Settled by the delete: nothing stored, the slot free.
            self._board.settled(message_id, lease_token)
            raise
        self._board.settled(message_id, lease_token)
        if result.already_processed:
            log.info("already processed; duplicate reply prevented message_id=%s", message_id)
        return result

    async def release(
        self, message_id: str, lease_token: str, *, reason: str, retry_after_ns: int
    ) -> StoredMessage:
        with self._answering_for(message_id, lease_token):
            message = await self._repository.release(
                message_id, lease_token, reason=reason, retry_after_ns=retry_after_ns
            )
        self._board.settled(message_id, lease_token)
        return message

    async def _give_back(self, deliveries: list[Delivery]) -> None:
        """Releases deliveries that were leased but never sent (their stream was draining):
        without a reason, so their attempts are given back."""
        outcomes = await asyncio.gather(
            *(
                self.release(d.message.id, d.lease_token, reason="", retry_after_ns=0)
                for d in deliveries
            ),
            return_exceptions=True,
        )
        for d, outcome in zip(deliveries, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                # It stays on the stream's board: the stream's end releases it.
                log.warning("could not give back message_id=%s: %s", d.message.id, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def extend_lease(self, message_id: str, lease_token: str, lease_ns: int) -> StoredMessage:
        with self._answering_for(message_id, lease_token):
            message = await self._repository.extend_lease(message_id, lease_token, lease_ns)
        assert message.lease_expire_ns is not None
        self._board.extended(message_id, lease_token, message.lease_expire_ns)
        log.debug("lease extended message_id=%s", message_id)
        return message

    async def requeue(self, message_id: str) -> StoredMessage:
        return await self._repository.requeue(message_id)

    async def erase_author(self, author: str) -> AsyncIterator[int]:
        """Tombstones every message of `author` and the replies to them, a batch per short
        transaction (each told by _committed like a delete: watch events, freed slots);
        yields the count deleted so far after each batch, and ends after the batch that found
        nothing left. Safe to call again after it was cut short."""
        total = 0
        while True:
            tombstones = await self._repository.erase_batch(author)
            total += len(tombstones)
            yield total
            if not tombstones:
                return
            if total % 10_000 < len(tombstones):
                log.info("erasing author: %d messages deleted so far", total)
            await asyncio.sleep(0)  # the writers queued meanwhile run before the next batch

    async def purge(
        self, state: State | str, older_than_ns: int, *, why: str = "purge"
    ) -> AsyncIterator[int]:
        """Removes for good the settled messages of `state` received more than `older_than_ns`
        ago, with their replies, a batch per transaction (tables/removal.py); yields the count
        removed so far after each batch, and ends when a batch finds nothing more to take.

        The cutoff is fixed when the call starts, so a purge ends even while new messages
        settle. Between batches the writers queued behind one (group commit's creates and
        settles) go first.
        """
        removal = Removal(str(state), self._now_ns() - older_than_ns, why)
        total = 0
        while True:
            removed = await self._repository.remove_batch(removal)
            total += removed.count
            yield total
            if not removed.full:
                return
            await asyncio.sleep(0)  # the writers queued meanwhile run before the next batch

    async def approve(self, message_id: str) -> StoredMessage:
        """HELD -> PENDING; the approval wakes the streams of every store (_committed)."""
        return await self._repository.approve(message_id)

    async def delete(self, message_id: str) -> DeleteResult:
        """The message and its reply become tombstones; a LEASED one's stream gets its slot
        back (_committed)."""
        return await self._repository.delete(message_id)

    def _committed(self, changes: Changes) -> None:
        """What a committed write changed, told: the one place that turns a write into
        wake-ups, watch events, metrics and log lines (the repository calls it after every
        write transaction, on the event loop).

        Wakes for the work the write made (`work_at_ns`), except a create's, which the
        claim-on-create rule wakes for (_create). A DEAD message is logged and counted
        whichever write made it: a claim out of attempts, a release, a hand-back.
        """
        created = False
        for change in changes.messages:
            cause = change.cause
            if cause is Cause.CREATED:
                created = True
                log.debug(
                    "created message_id=%s sequence=%d state=%s",
                    change.message_id,
                    change.sequence,
                    change.state.value,
                )
                continue
            self.watches.changed(change.message_id)
            if change.state is State.DEAD:
                if self._metrics is not None:
                    self._metrics.dead.inc()
                log.warning(
                    "message is dead after %d attempts message_id=%s last_error=%r",
                    change.attempts,
                    change.message_id,
                    change.last_error,
                )
            elif cause is Cause.DELIVERED:
                # Logged by the claim, which knows the stream (_claim_for).
                if self._metrics is not None:
                    self._metrics.delivered(change.attempts)
            elif cause is Cause.PROCESSED:
                if self._metrics is not None:
                    # Committed: the message's whole wait, seen from the store.
                    self._metrics.processed(change.receive_time_ns, self._now_ns())
                log.debug(
                    "processed message_id=%s reply_id=%s",
                    change.message_id,
                    change.reply_id or "-",
                )
            elif cause is Cause.REQUEUED:
                log.info("requeued message_id=%s", change.message_id)
            elif cause is Cause.APPROVED:
                log.info("approved message_id=%s", change.message_id)
            elif cause is Cause.DELETED:
                if change.lease_token is not None:
                    # Its lease ended with it: the stream that held it (on this store) has
                    # the slot back now, as after a settle. A stream on another store gets it
                    # back when its client's settle is answered MESSAGE_DELETED.
                    self._board.settled(change.message_id, change.lease_token)
                log.info(
                    "deleted message_id=%s was_leased=%s",
                    change.message_id,
                    change.lease_token is not None,
                )
            elif cause in REDELIVERY_CAUSES and self._metrics is not None:
                self._metrics.redelivery(cause.value)
            if cause is Cause.FAILED or cause is Cause.HANDED_BACK:
                # A release with a reason is a failure an operator may want to see; one without
                # is a delivery handed back unstarted (a bot stopping), routine.
                log.log(
                    logging.INFO if cause is Cause.FAILED else logging.DEBUG,
                    "released message_id=%s state=%s attempts=%d reason=%r",
                    change.message_id,
                    change.state.value,
                    change.attempts,
                    change.last_error if cause is Cause.FAILED else "",
                )
            elif cause is Cause.STREAM_ENDED:
                # (A dead or stopping store's hand-backs are logged by the registry.)
                log.debug("lease released on stream end message_id=%s", change.message_id)
        if created:
            self.watches.created()
        for removed in changes.removed:
            # Removed for good: no watch event (the ids are free again), a count and a line.
            for state, count in removed.by_state.items():
                if self._metrics is not None:
                    self._metrics.removed.labels(state, removed.why).inc(count)
            log.debug("removed %s (%s)", dict(removed.by_state), removed.why)
        if changes.work_at_ns:
            now = self._now_ns()
            if min(changes.work_at_ns) <= now:
                self._board.wake_all()
            for at_ns in changes.work_at_ns:
                if at_ns > now:
                    self._board.wake_at(at_ns)

    # -- work this store's writes did not make ------------------------------------------------

    def work_made_elsewhere(self) -> None:
        """Work may have appeared that no write of this store made: every stream looks, and the
        timed wakes are read again from the database.

        The one way in for such news: another store's notification, the catch-up after the
        listener (re)connects, the fallback poll, and whatever hands back another store's
        leases (a reaper). The writes of this store wake the streams themselves.
        """
        self._board.wake_all()
        self.watches.created()
        self._rearm_timed_wakes()

    def _rearm_timed_wakes(self) -> None:
        """Sets a timed wake at the next time a message becomes deliverable, read from the
        database (after REARM_DELAY_SECONDS): on a shared one, another store's lease may lapse
        or its retry_after end, and nothing announces either. Nothing on a database this store
        owns alone: every lease and retry_after in it is this store's, and its board already
        wakes for them. Nothing either while no stream is open: a wake would find nobody, and
        a new stream claims (and, if that comes back short, asks again) as it opens."""
        if not self._repository.shared or self._closed or not self._board.has_streams:
            return
        self._rearm_wanted = True
        if self._rearm_task is None:
            self._rearm_task = asyncio.create_task(self._rearm(), name="rearm-timed-wakes")

    async def _rearm(self) -> None:
        try:
            while self._rearm_wanted and not self._closed:
                await asyncio.sleep(REARM_DELAY_SECONDS)  # pacing
                self._rearm_wanted = False
                try:
                    next_visible = await self._repository.next_visible_ns()
                except StoreError as exc:
                    # The next short claim or the fallback poll asks again.
                    log.warning("could not read the next timed wake: %s", exc)
                    return
                if next_visible is not None and not self._closed:
                    self._board.wake_at(next_visible)
        except Exception:
            log.exception("reading the next timed wake failed")
        finally:
            self._rearm_task = None

    @contextlib.contextmanager
    def _answering_for(self, message_id: str, lease_token: str) -> Iterator[None]:
        """A release or extension refused because the lease is gone still tells us that its
        client is alive and done with that lease: the slot it kept on its stream is freed. A
        settle refused because the message was deleted (maybe through another store) settles
        the delivery: its slot is freed whether the lease lapsed or not."""
        try:
            yield
        except MessageDeleted:
            self._board.settled(message_id, lease_token)
            raise
        except FailedPrecondition:
            self._board.lapse_answered(message_id, lease_token)
            raise

    # -- streams -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_stream(
        self, consumer: str, *, max_in_flight: int, lease_ns: int
    ) -> AsyncIterator[DeliveryStream]:
        """Opens a stream for the calling task; leaving the block ends it and releases the
        leases it still holds, even when the task is being cancelled."""
        stream = Stream(consumer=consumer, max_in_flight=max_in_flight, lease_ns=lease_ns)
        self._board.open_stream(stream)
        self._track_handler()
        log.info(
            "stream opened consumer=%s max_in_flight=%d lease=%gs",
            consumer,
            max_in_flight,
            lease_ns / 1e9,
        )
        try:
            yield DeliveryStream(stream, self._board, self._start_claim, self._give_back)
        finally:
            await self._end_stream(stream)

    @contextlib.asynccontextmanager
    async def watch(self, after_sequence: int | None) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """Opens a WatchMessages watch for the calling task (see watch.py); shutdown ends it
        and waits for its task like a stream's."""
        self._track_handler()
        async with self.watches.watch(after_sequence) as events:
            yield events

    def _track_handler(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._stream_tasks.add(task)
            task.add_done_callback(self._stream_tasks.discard)

    # -- claims ------------------------------------------------------------------------------

    def _start_claim(self, stream: Stream, room: int, *, rides_with_create: bool = False) -> None:
        """Claims up to `room` messages for `stream` in a task of its own.

        Not in the stream's task: a claim queued for the database commits whether or not its
        stream is still there (group commit runs it regardless), so the task that waits for it
        must be one nothing cancels, and it puts the leases on the board the moment they exist.
        The stream's end waits for it (see _end_stream), so the end releases them.
        """
        stream.claim_started()
        self._claims[stream] = asyncio.create_task(
            self._claim_for(stream, room, rides_with_create), name="claim"
        )

    async def _claim_for(self, stream: Stream, room: int, rides_with_create: bool) -> None:
        try:
            deliveries = await self._repository.claim(room, stream.lease_ns)
        except Exception as exc:  # a StoreError, or a bug: either way the stream must go on
            del self._claims[stream]
            # A claim riding with a create fails with it (its caller learns why) or after it;
            # the create's message may then be unclaimed: every stream looks, this one too.
            stream.claim_failed(None if rides_with_create else exc)
            if rides_with_create:
                self._board.wake_all()
            return
        del self._claims[stream]
        if not self._board.is_open(stream):
            stream.claim_failed(None)
            # Cannot happen while _end_stream waits for the claim first; should it ever, the
            # leases go back now instead of when they expire.
            if deliveries:
                self._release_in_background(
                    [Lease(d.message.id, d.lease_token) for d in deliveries]
                )
            return
        for d in deliveries:
            self._board.leased(stream, d.message.id, d.lease_token, d.lease_expire_ns)
            log.debug(
                "delivered message_id=%s attempt=%d consumer=%s",
                d.message.id,
                d.message.delivery_attempts,
                stream.consumer,
            )
        full = len(deliveries) == room
        if full and rides_with_create:
            # More may be waiting, the create's message among them: every stream looks.
            self._board.wake_all()
        elif not full:
            # Everything deliverable was claimed (a create's message included: its claim ran
            # after it). What is left is not deliverable yet: wait for the next visibility,
            # which may be another store's lease.
            self._rearm_timed_wakes()
        stream.claim_finished(deliveries, full=full)

    async def _end_stream(self, stream: Stream) -> None:
        claim = self._claims.get(stream)
        if claim is not None:
            # Shielded, as the release below: its leases must reach the board before the
            # stream's end collects them.
            await asyncio.shield(claim)
        leases = self._board.close_stream(stream)
        log.info("stream closed consumer=%s releasing=%d", stream.consumer, len(leases))
        if not leases:
            return
        # Shielded: the handler is usually being cancelled (the client went away), and the
        # release must still reach the database. Shutdown waits for these tasks too.
        await asyncio.shield(self._release_in_background(leases))

    def _release_in_background(self, leases: list[Lease]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._release_leases(leases))
        self._lease_releases.add(task)
        task.add_done_callback(self._lease_releases.discard)
        return task

    async def _release_leases(self, leases: list[Lease]) -> None:
        try:
            await self._repository.release_leases(leases)
        except StoreError:
            # The leases will expire instead; nothing is lost, only delayed.
            log.exception("could not release %d leases of a closed stream", len(leases))

    async def close_streams(self, handler_wait_seconds: float) -> None:
        """Ends every stream, waits until the leases they held are back in the database, and
        gives the tasks running them up to `handler_wait_seconds` to finish. Safe to call again
        (the server does, for streams that opened meanwhile).

        Waiting for the tasks matters: a stream handler whose client cancelled just before
        shutdown may still be sending its status, and once the server has stopped that send
        never completes, which would leave the process hanging on exit.
        """
        self._closed = True
        if self._rearm_task is not None:
            self._rearm_task.cancel()
            await asyncio.gather(self._rearm_task, return_exceptions=True)
        streams = self._board.streams
        self._board.close()
        self.watches.close()
        for stream in streams:
            await self._end_stream(stream)
        if self._lease_releases:
            await asyncio.gather(*self._lease_releases, return_exceptions=True)
        current = asyncio.current_task()
        handlers = [task for task in self._stream_tasks if task is not current]
        if handlers:
            _, still_running = await asyncio.wait(handlers, timeout=handler_wait_seconds)
            if still_running:
                log.warning("%d stream handlers did not finish in time", len(still_running))
