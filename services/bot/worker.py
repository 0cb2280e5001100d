"""The stream consumer: takes deliveries from the store and answers each in a task of its own.

One stream at a time, re-established with backoff whenever it breaks: on the next store of the
list when the bot has several (round robin, so a dead store is skipped after one failed attempt
and every store gets its turn), on the same one when it has one. The stream is a Consume session,
on which the settlements go too (store_client.py); a store that answers Consume with
UNIMPLEMENTED (older than it) gets a StreamUnprocessed stream and unary settling calls instead,
at once and from then on. Each delivery becomes a task bounded by a semaphore of max_in_flight,
in which a DeliveryHandler (delivery.py) asks the responder, keeps the lease alive and settles
the delivery. The worker owns the stream, the slots, the shutdown drain and the health callback.

A delivery of a message whose reply is already running (the store restarted, or the stream broke
and came back, and handed the message out again) joins that reply instead of starting a second
one: the running job takes over the new lease (DeliveryHandler's Job.adopt) and settles it, so
each message costs one responder call.

Shutdown order matters, because the store releases every lease of a stream the moment it closes
and counts those deliveries as attempts, and because it refills any room a settled delivery leaves
on an open stream. On a Consume session: tell the store to send nothing more (drain); let running
replies finish and settle within the grace period (the session stays open so their leases hold);
cancel replies still running after it; hand back what never started with an empty reason (which
gives the attempt back); half-close and wait for the store to end the session. On a
StreamUnprocessed stream, which cannot say "no more": as above, but keep the replies'
MarkProcessed until the stream is closed, so no new delivery arrives only to be wasted; close the
stream; then store the replies that were held back (MarkProcessed needs no lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import grpc

from ackbot.bot.config import BotConfig
from ackbot.bot.delivery import DeliveryHandler, Job, Shutdown
from ackbot.bot.metrics import BotMetrics
from ackbot.bot.responder import Responder
from ackbot.bot.store_client import (
    ConsumeSession,
    DeliveryStream,
    Outcome,
    StoreClient,
    open_channel,
    store_credentials,
)
from ackbot.common.backoff import RECONNECT_BACKOFF
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

# Handing back unstarted deliveries must not hold up shutdown for long; a hand-back that does not
# get through only costs the message one attempt.
HAND_BACK_BUDGET_SECONDS = 5.0
# How long shutdown waits, once the stream is closed, for the replies it held back to be stored.
SETTLE_AFTER_CLOSE_SECONDS = 10.0

ConnectionCallback = Callable[[bool], Awaitable[None]]


@dataclass(eq=False, kw_only=True)
class _Job(Job):
    # Which stream brought it: when that stream breaks, the store has already taken the lease back.
    generation: int
    task: asyncio.Task[None] | None = None
    started: bool = False


class Worker:
    """Answers deliveries until stopped. Use `run()` + `stop()`, or `async with Worker(...)`.

    `on_connection(True/False)` is awaited whenever the stream to the store comes up or goes down;
    the entry point ties it to the health service.
    """

    def __init__(
        self,
        config: BotConfig,
        responder: Responder,
        *,
        on_connection: ConnectionCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: BotMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._config = config
        self._responder = responder
        self._on_connection = on_connection
        self._clock = clock
        self._client: StoreClient | None = None
        self._handler: DeliveryHandler | None = None
        self._slots: asyncio.Semaphore | None = None
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._shutdown = Shutdown()
        self._connected = False
        self._generation = 0
        self._live_generation: int | None = None
        self._stream: DeliveryStream | None = None
        self._jobs: set[_Job] = set()
        # The jobs by message id, for redeliveries to join (see _accept).
        self._replying: dict[str, _Job] = {}
        self._held: list[_Job] = []
        self._run_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """True while the stream to the store is established."""
        return self._connected

    async def __aenter__(self) -> Worker:
        self._run_task = asyncio.create_task(self.run(), name="ackbot-bot-worker")
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

    async def stop(self) -> None:
        """Stops gracefully (see the module docstring); safe to call twice, or before run()."""
        self._stop_requested.set()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """Consumes until stop() is called; re-raises the error if the stream reader fails."""
        if self._running:
            raise RuntimeError("Worker.run() may be called only once")
        self._running = True
        config = self._config
        # Created here, inside the running loop: a grpc.aio channel is bound to its loop.
        channels = {
            address: open_channel(address, store_credentials(config, address))
            for address in config.stores
        }
        self._client = StoreClient(channels)
        self._handler = DeliveryHandler(
            self._client,
            self._responder,
            config,
            shutdown=self._shutdown,
            clock=self._clock,
            metrics=self._metrics,
        )
        self._slots = asyncio.Semaphore(config.max_in_flight)
        reader = asyncio.create_task(self._read_forever(), name="ackbot-bot-stream")
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
            for task in leftovers:
                task.cancel()
            await asyncio.gather(reader, *leftovers, return_exceptions=True)
            await self._set_connected(False)
            await asyncio.gather(*(channel.close() for channel in channels.values()))
            self._done.set()
            log.info("worker stopped")

    # -- shutdown ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        self._shutdown.begun = True
        started = self._clock()
        session = self._live_session()
        if session is not None:
            session.drain()
            self._shutdown.drained = True
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
            waiters = {asyncio.create_task(job.replied.wait()): job for job in replying}
            try:
                _, late = await asyncio.wait(waiters, timeout=self._config.grace_seconds)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if late:
                log.warning(
                    "cancelling %d replies still running after the %.1fs grace period",
                    len(late),
                    self._config.grace_seconds,
                )
                for waiter in late:
                    task = waiters[waiter].task
                    if task is not None:
                        task.cancel()
        # Deliveries that arrived while draining were held too (see _accept).
        await self._hand_back()
        if session is not None and session is self._live_session():
            # Their settlements go on the session; then the store answers what it was sent and
            # ends the session, releasing whatever is left (a reply cancelled above).
            await self._wait_settling()
            await session.finish(SETTLE_AFTER_CLOSE_SECONDS)
        self._close_stream()
        # Replies that finished during the drain were held back until now (see DeliveryHandler).
        await self._wait_settling()
        log.info("drained in %.2fs", self._clock() - started)

    def _live_session(self) -> ConsumeSession | None:
        stream = self._stream
        if isinstance(stream, ConsumeSession) and self._live_generation == self._generation:
            return stream
        return None

    async def _wait_settling(self) -> None:
        settling = [job.task for job in self._jobs if job.task is not None and not job.task.done()]
        if settling:
            _, late_settles = await asyncio.wait(settling, timeout=SETTLE_AFTER_CLOSE_SECONDS)
            for task in late_settles:
                task.cancel()
            if late_settles:
                log.warning("gave up settling %d replies on shutdown", len(late_settles))
                await asyncio.wait(late_settles)

    async def _hand_back(self) -> None:
        held, self._held = self._held, []
        live = [job for job in held if job.generation == self._live_generation]
        if live:
            await asyncio.gather(*(self._hand_back_one(job) for job in live))

    async def _hand_back_one(self, job: _Job) -> None:
        assert self._client is not None
        result = await self._client.release(
            job.message_id,
            job.delivery.lease_token,
            reason="",
            retry_after_seconds=0.0,
            budget_seconds=HAND_BACK_BUDGET_SECONDS,
        )
        if result.outcome is Outcome.SETTLED:
            log.debug("handed back unstarted delivery message_id=%s", job.message_id)
        else:
            log.warning("could not hand back (%s) message_id=%s", result.problem, job.message_id)

    def _close_stream(self) -> None:
        # Last of all: closing the stream makes the store release every lease it still holds.
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        self._shutdown.stream_closed.set()

    # -- the stream -------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        assert self._client is not None
        assert self._handler is not None
        config = self._config
        stores = self._client.addresses
        store = 0
        retry = 0
        while not self._stop_requested.is_set():
            self._generation += 1
            generation = self._generation
            open_stream = (
                self._client.session if self._client.has_consume(store) else self._client.stream
            )
            self._stream = stream = open_stream(
                store=store,
                consumer=config.consumer,
                max_in_flight=config.max_in_flight,
                lease_seconds=config.lease_seconds,
            )
            was_up = False
            try:
                opened = await stream.wait_open()
                if (
                    not opened
                    and isinstance(stream, ConsumeSession)
                    and stream.end_code is grpc.StatusCode.UNIMPLEMENTED
                ):
                    log.info(
                        "store %s has no Consume; streaming with StreamUnprocessed and "
                        "settling by unary calls",
                        stream.address,
                    )
                    self._client.lacks_consume(store)
                    continue
                if opened:
                    # Every reply from now on goes to this store: fit it to this store's limit.
                    self._handler.max_reply_bytes = stream.max_reply_bytes
                    was_up = True
                    retry = 0
                    self._live_generation = generation
                    await self._set_connected(True)
                    log.info(
                        "stream open to %s as consumer %s (%s)",
                        stream.address,
                        config.consumer,
                        "Consume" if isinstance(stream, ConsumeSession) else "StreamUnprocessed",
                    )
                async for deliveries in stream:
                    for delivery in deliveries:
                        self._accept(delivery, generation)
            finally:
                if self._stream is stream:
                    self._stream = None
                stream.cancel()
            problem = stream.end_reason
            await self._set_connected(False)
            self._forget(generation)
            if self._stop_requested.is_set():
                # Replies held back for this stream need not wait any longer.
                self._shutdown.stream_closed.set()
                break
            # The backoff grows across stores too: when every store is down, each is tried no
            # more often than one reconnect pause times the number of stores.
            pause = RECONNECT_BACKOFF.delay(retry)
            retry += 1
            store = (store + 1) % len(stores)
            if was_up:
                log.warning(
                    "stream to %s broke (%s); reconnecting to %s in %.2fs",
                    stream.address,
                    problem,
                    stores[store],
                    pause,
                )
            else:
                log.warning(
                    "store %s unavailable (%s); retry %d on %s in %.2fs",
                    stream.address,
                    problem,
                    retry,
                    stores[store],
                    pause,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), pause)

    def _forget(self, generation: int) -> None:
        """The stream of `generation` is gone and the store took its leases back: anything from it
        that has not started would answer a message that is already being delivered again."""
        if self._live_generation == generation:
            self._live_generation = None
        dropped = [job for job in self._jobs if job.generation == generation and not job.started]
        for job in dropped:
            if job.task is not None:
                job.task.cancel()
            self._unregister(job)
        held = [job for job in self._held if job.generation == generation]
        self._held = [job for job in self._held if job.generation != generation]
        for job in [*dropped, *held]:
            log.debug("dropped unstarted delivery of a closed stream message_id=%s", job.message_id)

    def _accept(self, delivery: pb.Delivery, generation: int) -> None:
        log.debug("received message_id=%s attempt=%d", delivery.message.id, delivery.attempt)
        running = self._replying.get(delivery.message.id)
        if (
            running is not None
            and running.joinable
            and running.task is not None
            and not running.task.done()
        ):
            # Its reply is already being written: that job answers this delivery too. The new
            # lease occupies a slot on this stream until the job settles it.
            running.generation = generation
            running.adopt(delivery, self._clock())
            log.info(
                "delivered again while its reply runs (attempt %d); joined the running reply "
                "message_id=%s",
                delivery.attempt,
                delivery.message.id,
            )
            return
        job = _Job(delivery, received_at=self._clock(), generation=generation)
        if self._shutdown.begun:
            # Held, not released at once: a released message would come straight back on this
            # still-open stream. All held deliveries are handed back together at the end.
            self._held.append(job)
            return
        job.task = asyncio.create_task(self._run_job(job), name=f"reply {job.message_id}")
        self._jobs.add(job)
        self._replying[job.message_id] = job
        job.task.add_done_callback(lambda _task: self._finished(job))

    def _finished(self, job: _Job) -> None:
        self._jobs.discard(job)
        self._unregister(job)

    def _unregister(self, job: _Job) -> None:
        # Only its own entry: a newer job may have the message's id by now.
        if self._replying.get(job.message_id) is job:
            del self._replying[job.message_id]

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

    async def _run_job(self, job: _Job) -> None:
        assert self._slots is not None
        assert self._handler is not None
        async with self._slots:
            if self._shutdown.begun:  # shutdown began while this job waited for its slot
                if job not in self._held:
                    self._held.append(job)
                return
            job.started = True
            try:
                await self._handler.handle(job)
            except Exception:
                log.exception("unexpected error while answering message_id=%s", job.message_id)
