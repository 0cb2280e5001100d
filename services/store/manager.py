"""Delivery's one owner, between the servicer (gRPC) and the repository (SQL).

`MessageManager` does every write together with the wake-up it causes (a create or a requeue
makes work for every stream, a settle frees a slot on one), runs the claim loop of each open
stream, releases a stream's leases when it ends, and ends every stream on shutdown. Procrastinate's
manager is the model: the servicer validates, makes one call here, and maps the answer to
protobuf; nothing here knows gRPC, and nothing here writes SQL.

The streams' bookkeeping (which lease each holds, its room, when it wakes) is the ledger in
stream_board.py, which only the manager tells what happened.

On a database other stores share (PostgreSQL), work also appears that no write of this store
made: another store's create or release, a lease it granted that lapses. `work_made_elsewhere`
is the one way in for that news (another store's notification, the fallback poll, a reaper),
and the timed wakes are read from the database then and after every claim that came back short,
so they cover every store's leases and retry_afters, not only ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ackbot.store.errors import FailedPrecondition, StoreError
from ackbot.store.metrics import StoreMetrics
from ackbot.store.models import State
from ackbot.store.repository import (
    CreateResult,
    Delivery,
    Lease,
    MarkResult,
    MessageRepository,
    NewMessage,
    ReleasedLease,
    StoredMessage,
)
from ackbot.store.stream_board import WAKE_STEP_NS, CallAt, StreamBoard, StreamState
from ackbot.store.watch import WatchEvent, WatchHub

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a request to read the next timed wake waits for company: the claims that the same
# news sets off run first, without a read beside them, and those that come back short share the
# read instead of queueing one each (timed wakes are this coarse anyway).
REARM_DELAY_SECONDS = WAKE_STEP_NS / 1e9


@dataclass(frozen=True)
class StreamStats:
    consumer: str
    max_in_flight: int
    # Unsettled deliveries, lapsed leases not yet answered for included.
    in_flight: int
    lease_ns: int


@dataclass(frozen=True)
class StoreStats:
    """Messages by state (lapsed leases as PENDING), the oldest PENDING's receive time, and
    this store's open streams, read at `read_ns`."""

    counts: Mapping[str, int]
    oldest_pending_ns: int | None
    streams: list[StreamStats]
    store_id: str
    read_ns: int


def _log_created(result: CreateResult) -> bool:
    """Logs a create's outcome; True when it stored a new message (work for the streams)."""
    if result.already_existed:
        log.debug("create retried; already stored message_id=%s", result.message.id)
        return False
    log.debug("created message_id=%s sequence=%d", result.message.id, result.message.sequence)
    return True


class DeliveryStream:
    """The deliveries of one open stream, as an async iterator of batches.

    Each batch is what the stream had room for, leased to it and counted as an attempt. The
    iteration ends only when the store shuts down; a client that goes away ends the stream by
    leaving `MessageManager.open_stream`. After `drain()` no batch comes any more, and the
    iteration waits for the shutdown.

    Claims run in tasks of their own (`MessageManager._start_claim`), never in the stream's: the
    stream's own when it has room and work may exist, or one that rides in the transaction of a
    CreateMessage while the stream waits. Either puts its leases on the board as it completes,
    whatever happened to the stream meanwhile, and hands them here through `claimed`.
    """

    def __init__(
        self,
        state: StreamState,
        board: StreamBoard,
        claim: Callable[[StreamState, int], None],
        give_back: Callable[[list[Delivery]], Awaitable[None]],
    ) -> None:
        self._state = state
        self._board = board
        self._claim = claim
        self._give_back = give_back
        # Why the stream's own last claim failed: raised from the iteration, which ends the
        # stream with that error, as a claim made in the stream's own task would.
        self.claim_error: Exception | None = None

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Changes the most unsettled deliveries the stream may hold (Consume's flow control)."""
        log.info(
            "stream window changed consumer=%s max_in_flight=%d",
            self._state.consumer,
            max_in_flight,
        )
        self._board.limit(self._state, max_in_flight)

    def drain(self) -> None:
        """No more deliveries on this stream: its client is stopping (Consume's drain)."""
        if not self._state.draining:
            log.info("stream draining consumer=%s", self._state.consumer)
        self._board.drain(self._state)

    def __aiter__(self) -> DeliveryStream:
        return self

    async def __anext__(self) -> list[Delivery]:
        stream = self._state
        while not stream.closing:
            stream.wakeup.clear()
            if stream.claimed:
                deliveries, stream.claimed = stream.claimed, []
                if stream.draining:
                    # The drain came while the claim ran: the client would only hand these
                    # back, so the store does, and gives their attempts back.
                    await self._give_back(deliveries)
                    continue
                return deliveries
            if self.claim_error is not None:
                error, self.claim_error = self.claim_error, None
                raise error
            if not stream.claiming and not stream.draining:
                room = self._board.room(stream)
                if room > 0 and stream.work_may_exist:
                    self._claim(stream, room)
            # Only a stream parked here is one a create may claim for: a handler suspended
            # elsewhere (sending, or dropped by its client and not yet finalized) would sit on
            # the messages. (A draining one never is: StreamBoard.waiting_stream.)
            stream.waiting = True
            try:
                await stream.wakeup.wait()
            finally:
                stream.waiting = False
        raise StopAsyncIteration


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
    ) -> None:
        self._metrics = metrics
        self._repository = repository
        self._now_ns = clock_ns
        self._board = StreamBoard(clock_ns, call_at, on_lapse=self._lease_lapsed)
        # Told of every change this store makes, for WatchMessages; costs nothing unwatched.
        self.watches = WatchHub(repository)
        self._lease_releases: set[asyncio.Task[None]] = set()
        # Claims in flight, each in a task of its own (see _start_claim), by stream.
        self._claims: dict[StreamState, asyncio.Task[None]] = {}
        self._iterations: dict[StreamState, DeliveryStream] = {}
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

    # -- writes, each with the wake-up it causes ---------------------------------------------

    async def create_message(self, new: NewMessage) -> CreateResult:
        return await self._create(self._repository.create_message(new), _log_created)

    async def create_messages(self, news: list[NewMessage]) -> list[CreateResult | StoreError]:
        """CreateMessage for many, in one transaction, with one wake-up for all of them. Each
        item's outcome is its own: a result, or the error it alone was refused with."""

        def any_stored(outcomes: list[CreateResult | StoreError]) -> bool:
            # Every result is logged: a list, not a generator that any() would cut short.
            return any([_log_created(o) for o in outcomes if not isinstance(o, StoreError)])

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
        if stored_new(outcome):
            self.watches.created()
            if waiting is None:
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
        result = await self._repository.mark_processed(
            message_id, reply, lease_token, context_sequence=context_sequence
        )
        self._board.settled(message_id, lease_token)
        if not result.already_processed:
            self.watches.changed(message_id)
            self.watches.created()  # its reply
        if result.unblocked:
            # The next message of its conversation is deliverable now.
            self._board.wake_all()
        if result.already_processed:
            log.info("already processed; duplicate reply prevented message_id=%s", message_id)
        else:
            if self._metrics is not None:
                # The mark has committed: the message's whole wait, seen from the store.
                self._metrics.processed(result.message.receive_time_ns, self._now_ns())
            log.debug(
                "processed message_id=%s reply_id=%s",
                message_id,
                result.reply.id if result.reply else "-",
            )
        return result

    async def release(
        self, message_id: str, lease_token: str, *, reason: str, retry_after_ns: int
    ) -> StoredMessage:
        with self._answering_for(message_id, lease_token):
            message = await self._repository.release(
                message_id, lease_token, reason=reason, retry_after_ns=retry_after_ns
            )
        self._board.settled(message_id, lease_token)
        self.watches.changed(message_id)
        # A release with a reason is a failure an operator may want to see; one without is a
        # delivery handed back unstarted (a bot stopping), routine.
        log.log(
            logging.INFO if reason else logging.DEBUG,
            "released message_id=%s state=%s attempts=%d reason=%r",
            message.id,
            message.state.value,
            message.delivery_attempts,
            reason,
        )
        if message.state is State.PENDING and self._metrics is not None:
            self._metrics.redelivery("failed" if reason else "handed_back")
        if message.state is State.DEAD and message.conversation_id is not None:
            # No longer holding back the rest of its conversation.
            self._board.wake_all()
        elif message.state is State.PENDING:
            if retry_after_ns:
                self._board.wake_at(self._now_ns() + retry_after_ns)
            else:
                self._board.wake_all()
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
        message = await self._repository.requeue(message_id)
        log.info("requeued message_id=%s", message_id)
        self._board.wake_all()
        self.watches.changed(message_id)
        return message

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

    def dead_store_reaped(self, released: Sequence[ReleasedLease]) -> None:
        """Leases of a dead store that this store's reaper handed back (the registry's news):
        their changes are watched and counted here, like the ones this store's own writes make."""
        for lease in released:
            self.watches.changed(lease.message_id)
        self._count_handed_back("store_died", released)

    def _count_handed_back(self, cause: str, released: Sequence[ReleasedLease]) -> None:
        """Redeliveries by `cause`: the handed-back leases whose message is PENDING again (one
        made DEAD counts in ackbot_dead_total instead)."""
        if self._metrics is not None:
            again = sum(lease.state is State.PENDING for lease in released)
            self._metrics.redelivery(cause, again)

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
        client is alive and done with that lease: the slot it kept on its stream is freed."""
        try:
            yield
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
        stream = StreamState(consumer=consumer, max_in_flight=max_in_flight, lease_ns=lease_ns)
        self._board.open_stream(stream)
        self._track_handler()
        log.info(
            "stream opened consumer=%s max_in_flight=%d lease=%gs",
            consumer,
            max_in_flight,
            lease_ns / 1e9,
        )
        iteration = DeliveryStream(stream, self._board, self._start_claim, self._give_back)
        self._iterations[stream] = iteration
        try:
            yield iteration
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

    def _start_claim(
        self, stream: StreamState, room: int, *, rides_with_create: bool = False
    ) -> None:
        """Claims up to `room` messages for `stream` in a task of its own.

        Not in the stream's task: a claim queued for the database commits whether or not its
        stream is still there (group commit runs it regardless), so the task that waits for it
        must be one nothing cancels, and it puts the leases on the board the moment they exist.
        The stream's end waits for it (see _end_stream), so the end releases them.
        """
        stream.claiming = True
        # Cleared before the claim, as the event is: work made during it sets it again.
        stream.work_may_exist = False
        self._claims[stream] = asyncio.create_task(
            self._claim_for(stream, room, rides_with_create), name="claim"
        )

    async def _claim_for(self, stream: StreamState, room: int, rides_with_create: bool) -> None:
        try:
            deliveries = await self._repository.claim(room, stream.lease_ns)
        except Exception as exc:  # a StoreError, or a bug: either way the stream must go on
            stream.claiming = False
            del self._claims[stream]
            if rides_with_create:
                # The create's message may be unclaimed: every stream looks, this one too.
                self._board.wake_all()
            else:
                iteration = self._iterations.get(stream)
                if iteration is not None:
                    iteration.claim_error = exc
                stream.wakeup.set()
            return
        stream.claiming = False
        del self._claims[stream]
        if not self._board.is_open(stream):
            # Cannot happen while _end_stream waits for the claim first; should it ever, the
            # leases go back now instead of when they expire.
            if deliveries:
                self._release_in_background(
                    [Lease(d.message.id, d.lease_token) for d in deliveries]
                )
            return
        for d in deliveries:
            self._board.leased(stream, d.message.id, d.lease_token, d.lease_expire_ns)
            if self._metrics is not None:
                self._metrics.delivered(d.message.delivery_attempts)
            self.watches.changed(d.message.id)
            log.debug(
                "delivered message_id=%s attempt=%d consumer=%s",
                d.message.id,
                d.message.delivery_attempts,
                stream.consumer,
            )
        stream.claimed.extend(deliveries)
        if len(deliveries) == room:
            # More may be waiting, the create's message among them: every stream looks.
            if rides_with_create:
                self._board.wake_all()
            stream.work_may_exist = True
        else:
            # Everything deliverable was claimed (a create's message included: its claim ran
            # after it). What is left is not deliverable yet: wait for the next visibility,
            # which may be another store's lease.
            self._rearm_timed_wakes()
        stream.wakeup.set()

    async def _end_stream(self, stream: StreamState) -> None:
        claim = self._claims.get(stream)
        if claim is not None:
            # Shielded, as the release below: its leases must reach the board before the
            # stream's end collects them.
            await asyncio.shield(claim)
        self._iterations.pop(stream, None)
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
            released = await self._repository.release_leases(leases)
        except StoreError:
            # The leases will expire instead; nothing is lost, only delayed.
            log.exception("could not release %d leases of a closed stream", len(leases))
            return
        for lease in leases:
            log.debug("lease released on stream end message_id=%s", lease.message_id)
            self.watches.changed(lease.message_id)
        self._count_handed_back("stream_ended", released)
        if released:
            self._board.wake_all()

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
