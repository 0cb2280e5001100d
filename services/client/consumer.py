"""`Consumer`: takes deliveries from the stores and hands each to the application's callback in
a task of its own, keeping its lease and settling it (the Pub/Sub subscriber's
StreamingPullManager; the stream is pull.py's, the leases leaser.py's, the settling
delivery.py's). The stream is a Consume session, on which the settlements go too (router.py).

A store older than Consume (the released contract v0.1.0 has StreamUnprocessed only) answers it
with UNIMPLEMENTED; that store then gets a StreamUnprocessed stream and unary settling calls, at
once and from then on. Kept on purpose: v0.1.0 stores exist, the store keeps the RPC either way
(it is released and buf guards it), and without the fallback a consumer upgraded before its
stores would never connect, where with it the only cost is the shutdown gate of delivery.py.

Each delivery becomes a task bounded by a semaphore of max_in_flight. A delivery of a message
whose callback is still running (the store restarted, or the stream broke and came back, and
handed the message out again) joins that callback instead of starting a second one: the running
delivery takes over the new lease and settles it, so each message costs one callback.

Flow control: `pause(reason)` drains the session (for good), hands back what has not started
(no attempt spent) and lets running callbacks finish; `resume()` opens a new session beside it.
A StreamUnprocessed stream cannot be told to stop: what it sends while paused is kept, leased,
and started on resume.

Shutdown order matters, because the store releases every lease of a stream the moment it closes
and counts those deliveries as attempts, and because it refills any room a settled delivery leaves
on an open stream. On a Consume session: tell the store to send nothing more (drain); let running
callbacks finish and settle within the grace period (the session stays open so their leases
hold); cancel callbacks still running after it; hand back what never started with an empty reason
(which gives the attempt back); half-close and wait for the store to end the session. On a
StreamUnprocessed stream, which cannot say "no more": as above, but keep the MarkProcessed calls
until the stream is closed, so no new delivery arrives only to be wasted; close the stream; then
store the replies that were held back (MarkProcessed needs no lease).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import grpc

from ackbot.client.channels import Stores
from ackbot.client.client import Client
from ackbot.client.delivery import Callback, Delivery, Shutdown, dispatch
from ackbot.client.leaser import Leaser
from ackbot.client.outcomes import Outcome
from ackbot.client.pull import StreamPull
from ackbot.client.router import StoreClient
from ackbot.client.streams import ConsumeSession, DeliveryStream
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

# Handing back unstarted deliveries must not hold up shutdown for long; a hand-back that does not
# get through only costs the message one attempt.
HAND_BACK_BUDGET_SECONDS = 5.0
# How long shutdown waits, once the stream is closed, for the replies it held back to be stored.
SETTLE_AFTER_CLOSE_SECONDS = 10.0

ConnectionCallback = Callable[[bool], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSettings:
    #: the stream's name in the store's logs
    consumer: str = "ackbot-client"
    #: the author of the replies a callback returns as text
    author: str = "ackbot-client"
    #: deliveries handled at once; the store never sends more unsettled ones
    max_in_flight: int = 16
    #: each delivery's lease, extended every half lease while its callback runs
    lease_seconds: float = 60.0
    #: a failed message is retried after base * 2^(attempt-1) s
    retry_base_seconds: float = 1.0
    #: how long running callbacks may finish after stop()
    grace_seconds: float = 10.0
    #: open Consume sessions (False: StreamUnprocessed streams and unary settles throughout)
    consume: bool = True
    #: who is consuming, for the one line a store's refusal of the stream logs
    role: str = "consumer"
    #: what to check when a store refuses the stream (PERMISSION_DENIED, UNAUTHENTICATED)
    credentials_hint: str = "check its token or client certificate"


class Consumer:
    """Hands deliveries to `callback` until stopped. Use `run()` + `stop()`, or
    `async with Consumer(...)`.

    `stores` is a `Client` (its one channel, left open) or `Stores` (channels opened by `run()`
    and closed at its end). `on_connection(True/False)` is awaited whenever the stream comes up
    or goes down; `on_lease_lost(delivery)` is called when a delivery's callback is abandoned
    because its lease was lost (another consumer may be answering it by now).
    """

    def __init__(
        self,
        stores: Client | Stores,
        callback: Callback,
        settings: ConsumerSettings | None = None,
        *,
        on_connection: ConnectionCallback | None = None,
        on_lease_lost: Callable[[Delivery], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stores = stores
        self._callback = callback
        self.settings = settings or ConsumerSettings()
        self._on_connection = on_connection
        self._on_lease_lost = on_lease_lost
        self._clock = clock
        self._store: StoreClient | None = None
        self._leaser: Leaser | None = None
        self._slots: asyncio.Semaphore | None = None
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._shutdown = Shutdown()
        self._connected = False
        self._pull: StreamPull | None = None
        self._max_reply_bytes = 0
        self._jobs: set[Delivery] = set()
        # The deliveries by message id, for redeliveries to join (see _accept).
        self._replying: dict[str, Delivery] = {}
        self._held: list[Delivery] = []
        self._run_task: asyncio.Task[None] | None = None
        # Flow control: why the consumer is paused (None: it is not).
        self._paused: str | None = None
        self._parked: list[Delivery] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """True while the stream to a store is established."""
        return self._connected

    @property
    def paused(self) -> str | None:
        """Why the consumer is paused; None while it takes work."""
        return self._paused

    async def __aenter__(self) -> Consumer:
        self._run_task = asyncio.create_task(self.run(), name="ackbot-consumer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_requested.set()
        if self._run_task is not None:
            await self._run_task

    def stop(self) -> Awaitable[object]:
        """Asks `run()` to stop gracefully (see the module docstring), at once; what it returns
        is done once it has stopped (await it, or not). Safe to call twice, or before run()."""
        self._stop_requested.set()
        if self._running and not self._done.is_set():
            return asyncio.ensure_future(self._done.wait())
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stopped.set_result(None)
        return stopped

    # -- flow control -----------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        """Takes no new work until `resume()`: the store is told to send nothing new, and the
        deliveries held that have not started are handed back without spending an attempt.
        Running callbacks go on and settle. Safe to call while paused (the reason is kept).
        Logged at DEBUG only: the caller logs its reason, once."""
        if self._paused is not None:
            return
        self._paused = reason
        # DEBUG: the application that pauses says why, once (the bot's breaker does).
        log.debug("pausing (%s): taking no new work", reason)
        if self._pull is not None:  # else the stream is drained as it opens
            self._pull.hold_back = True
            self._pull.drain()
        for job in list(self._jobs):
            if not job.started and job.task is not None:
                task, job.task = job.task, None
                task.cancel()
                self._unregister(job)
                self._jobs.discard(job)
                self._hold_paused(job)

    def resume(self) -> None:
        """Takes work again after `pause()`; a no-op when not paused."""
        if self._paused is None:
            return
        log.debug("resuming after pause (%s)", self._paused)
        self._paused = None
        parked, self._parked = self._parked, []
        for job in parked:
            if job.generation == self._pull_or_fail().live_generation:
                self._start(job)
        if self._pull is not None:
            # A drained session cannot take work again: a new one is opened beside it.
            self._pull.hold_back = False
            self._pull.reopen()

    def _hold_paused(self, job: Delivery) -> None:
        """A delivery not started while paused: handed back when the store was told to send
        nothing more, kept (its lease too) until resume on a stream that cannot be told."""
        if job.generation != self._pull_or_fail().live_generation:
            return  # its stream is gone, and the store took the lease back
        if job.generation == self._pull_or_fail().drained_generation:
            self._spawn(self._hand_back_one(job), f"hand back {job.message_id}")
            return
        assert self._leaser is not None
        self._leaser.hold(job)
        self._parked.append(job)

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consumes until stop() is called; re-raises the error if the stream reader fails."""
        if self._running:
            raise RuntimeError("Consumer.run() may be called only once")
        self._running = True
        # Created here, inside the running loop: a grpc.aio channel is bound to its loop.
        if isinstance(self._stores, Client):
            channels = {self._stores.address: self._stores.channel}
            owned: list[grpc.aio.Channel] = []
        else:
            try:
                channels = self._stores.open()
            except BaseException:
                self._done.set()  # nothing to stop: stop() must not wait
                raise
            owned = list(channels.values())
        self._store = StoreClient(channels)
        self._leaser = Leaser(
            self._store, self.settings.lease_seconds, on_lost=self._lost, clock=self._clock
        )
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        leaser = asyncio.create_task(self._leaser.run(), name="ackbot-consumer-leaser")
        settings = self.settings
        self._pull = StreamPull(
            self._store,
            consumer=settings.consumer,
            max_in_flight=settings.max_in_flight,
            lease_seconds=settings.lease_seconds,
            consume=settings.consume,
            stop=self._stop_requested,
            accept=self._accept,
            up=self._up,
            down=self._down,
            retire=self._retire,
            role=settings.role,
            credentials_hint=settings.credentials_hint,
        )
        # Paused before run(): the first session opens drained, so nothing is delivered.
        self._pull.hold_back = self._paused is not None
        reader = asyncio.create_task(self._pull.run(), name="ackbot-consumer-stream")
        stop_wait = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            failure = reader.exception() if reader.done() and not reader.cancelled() else None
            if failure is not None:
                log.error("stream reader failed; stopping", exc_info=failure)
            await self._drain()
            if failure is not None:
                raise failure
        finally:
            stop_wait.cancel()
            self._close_stream()
            reader.cancel()
            leftovers = [job.task for job in self._jobs if job.task is not None]
            leftovers += list(self._background)
            for task in leftovers:
                task.cancel()
            await asyncio.gather(reader, *leftovers, return_exceptions=True)
            leaser.cancel()
            await asyncio.gather(leaser, return_exceptions=True)
            await self._set_connected(False)
            await asyncio.gather(*(channel.close() for channel in owned))
            self._done.set()
            log.info("consumer stopped")

    # -- shutdown ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        self._shutdown.begun = True
        started = self._clock()
        session = self._live_session()
        if session is not None:
            self._pull_or_fail().drain()
            self._shutdown.drained = True
        self._held += self._parked
        self._parked = []
        for job in list(self._jobs):
            if not job.started and job.task is not None:
                # Still waiting for a slot: never started, so it is handed back below.
                job.task.cancel()
                self._unregister(job)
                self._held.append(job)
        replying = [job for job in self._jobs if job.started and not job.replied.is_set()]
        log.info(
            "stopping: %d replies running, %d deliveries to hand back",
            len(replying),
            len(self._held),
        )
        if replying:
            await self._grace(replying)
        # Deliveries that arrived while draining were held too (see _accept).
        await self._hand_back()
        if session is not None and session is self._live_session():
            # Their settlements go on the session; then the store answers what it was sent and
            # ends the session, releasing whatever is left (a callback cancelled above).
            await self._wait_settling()
            await session.finish(SETTLE_AFTER_CLOSE_SECONDS)
        self._close_stream()
        # Replies that finished during the drain were held back until now (see delivery.py).
        await self._wait_settling()
        log.info("drained in %.2fs", self._clock() - started)

    async def _grace(self, replying: list[Delivery]) -> None:
        grace = self.settings.grace_seconds
        waiters = {asyncio.create_task(job.replied.wait()): job for job in replying}
        try:
            _, late = await asyncio.wait(waiters, timeout=grace)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if late:
            log.warning(
                "cancelling %d replies still running after the %.1fs grace period",
                len(late),
                grace,
            )
            for waiter in late:
                task = waiters[waiter].task
                if task is not None:
                    task.cancel()

    def _live_session(self) -> ConsumeSession | None:
        return self._pull.live_session() if self._pull is not None else None

    def _pull_or_fail(self) -> StreamPull:
        assert self._pull is not None
        return self._pull

    async def _wait_settling(self) -> None:
        settling = [job.task for job in self._jobs if job.task is not None and not job.task.done()]
        settling += list(self._background)
        if settling:
            _, late_settles = await asyncio.wait(settling, timeout=SETTLE_AFTER_CLOSE_SECONDS)
            for task in late_settles:
                task.cancel()
            if late_settles:
                log.warning("gave up settling %d replies on shutdown", len(late_settles))
                await asyncio.wait(late_settles)

    async def _hand_back(self) -> None:
        held, self._held = self._held, []
        live = [job for job in held if job.generation == self._pull_or_fail().live_generation]
        if live:
            await asyncio.gather(*(self._hand_back_one(job) for job in live))

    async def _hand_back_one(self, job: Delivery) -> None:
        assert self._store is not None
        assert self._leaser is not None
        self._leaser.drop(job)
        result = await self._store.release(
            job.message_id,
            job.lease_token,
            reason="",
            retry_after_seconds=0.0,
            budget_seconds=HAND_BACK_BUDGET_SECONDS,
        )
        if result.outcome is Outcome.SETTLED:
            log.debug("handed back unstarted delivery message_id=%s", job.message_id)
        else:
            log.warning("could not hand back (%s) message_id=%s", result.problem, job.message_id)

    def _close_stream(self) -> None:
        if self._pull is not None:
            self._pull.close()
        self._shutdown.stream_closed.set()

    # -- the stream's events (pull.py) -------------------------------------------------------

    async def _up(self, stream: DeliveryStream, generation: int) -> None:
        # Every reply from now on goes to this store: fit it to this store's limit.
        self._max_reply_bytes = stream.max_reply_bytes
        if self._paused is not None:
            self._pull_or_fail().drain()
        await self._set_connected(True)

    async def _down(self, generation: int) -> None:
        await self._set_connected(False)
        self._forget(generation)
        if self._stop_requested.is_set():
            # Replies held back for this stream need not wait any longer.
            self._shutdown.stream_closed.set()

    def _retire(self, session: ConsumeSession, generation: int) -> None:
        self._spawn(self._retire_when_idle(session, generation), f"retire {session.address}")

    async def _retire_when_idle(self, session: ConsumeSession, generation: int) -> None:
        """A drained session left on resume: ends it once no delivery of it is running."""
        while running := [
            job.task
            for job in self._jobs
            if job.generation == generation and job.task is not None and not job.task.done()
        ]:
            await asyncio.wait(running)
        await session.finish(SETTLE_AFTER_CLOSE_SECONDS)
        session.cancel()

    def _forget(self, generation: int) -> None:
        """The stream of `generation` is gone and the store took its leases back: anything from it
        that has not started would answer a message that is already being delivered again."""
        dropped = [job for job in self._jobs if job.generation == generation and not job.started]
        for job in dropped:
            if job.task is not None:
                job.task.cancel()
            self._unregister(job)
        gone = [job for job in [*self._held, *self._parked] if job.generation == generation]
        self._held = [job for job in self._held if job.generation != generation]
        self._parked = [job for job in self._parked if job.generation != generation]
        for job in [*dropped, *gone]:
            if self._leaser is not None:
                self._leaser.drop(job)
            log.debug("dropped unstarted delivery of a closed stream message_id=%s", job.message_id)

    def _accept(self, delivery: pb.Delivery, generation: int) -> None:
        assert self._store is not None
        assert self._leaser is not None
        log.debug("received message_id=%s attempt=%d", delivery.message.id, delivery.attempt)
        running = self._replying.get(delivery.message.id)
        if running is not None and running.joinable:
            # Its reply is already being written: that delivery answers this one too. The new
            # lease occupies a slot on this stream until it is settled.
            running.adopt(delivery, self._clock(), generation)
            running.max_reply_bytes = self._max_reply_bytes
            log.info(
                "delivered again while its reply runs (attempt %d); joined the running reply "
                "message_id=%s",
                delivery.attempt,
                delivery.message.id,
            )
            return
        job = Delivery(
            delivery,
            received_at=self._clock(),
            generation=generation,
            store=self._store,
            leaser=self._leaser,
            shutdown=self._shutdown,
            lease_seconds=self.settings.lease_seconds,
            max_reply_bytes=self._max_reply_bytes,
        )
        if self._shutdown.begun:
            # Held, not released at once: a released message would come straight back on this
            # still-open stream. All held deliveries are handed back together at the end.
            self._held.append(job)
            return
        if self._paused is not None:
            self._hold_paused(job)
            return
        self._start(job)

    def _start(self, job: Delivery) -> None:
        job.task = asyncio.create_task(self._run_job(job), name=f"reply {job.message_id}")
        self._jobs.add(job)
        self._replying[job.message_id] = job
        job.task.add_done_callback(lambda task: self._finished(job, task))

    def _finished(self, job: Delivery, task: asyncio.Task[None]) -> None:
        if job.task is not task:
            return  # taken off its slot while paused, and held again
        self._jobs.discard(job)
        self._unregister(job)
        if self._leaser is not None:
            self._leaser.drop(job)

    def _unregister(self, job: Delivery) -> None:
        # Only its own entry: a newer delivery may have the message's id by now.
        if self._replying.get(job.message_id) is job:
            del self._replying[job.message_id]

    def _lost(self, job: Delivery) -> None:
        """The Leaser gave up `job`'s lease: another consumer may be answering by now, and this
        answer would be the second. A reply already made is still stored (MarkProcessed needs no
        lease; the first reply wins)."""
        if job.replied.is_set() or job.task is None or job.task.done():
            return
        log.warning("abandoning the reply: lease lost message_id=%s", job.message_id)
        job.task.cancel()
        if self._on_lease_lost is not None:
            self._on_lease_lost(job)

    async def _set_connected(self, up: bool) -> None:
        if self._connected == up:
            return
        self._connected = up
        if self._on_connection is not None:
            try:
                await self._on_connection(up)
            except Exception:
                log.exception("connection callback failed")

    # -- one delivery -----------------------------------------------------------------------

    async def _run_job(self, job: Delivery) -> None:
        assert self._slots is not None
        assert self._leaser is not None
        async with self._slots:
            if self._shutdown.begun:  # shutdown began while this job waited for its slot
                if job not in self._held:
                    self._held.append(job)
                return
            job.started = True
            self._leaser.hold(job)
            try:
                await dispatch(
                    job,
                    self._callback,
                    author=self.settings.author,
                    retry_base_seconds=self.settings.retry_base_seconds,
                )
            except Exception:
                log.exception("unexpected error while answering message_id=%s", job.message_id)
            finally:
                job.replied.set()
                self._leaser.drop(job)
