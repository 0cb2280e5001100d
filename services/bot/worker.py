"""The stream consumer: takes deliveries from the store, asks the responder, settles each one.

One StreamUnprocessed stream at a time, re-established with backoff whenever it breaks. Each
delivery becomes a task bounded by a semaphore of max_in_flight; while the responder runs, a lease
keeper extends the lease every half lease. The outcome settles the delivery: MarkProcessed (with
the reply, or without one when the responder chose silence) or ReleaseMessage (with the reason, on
failure).

Shutdown order matters, because the store releases every lease of a stream the moment it closes
and counts those deliveries as attempts, and because it refills any room a settled delivery leaves
on an open stream. So: stop taking work; let running replies finish within the grace period (the
stream stays open so their leases hold), but keep their MarkProcessed until the stream is closed,
so no new delivery arrives only to be wasted; cancel replies still running after the grace period;
hand back what never started with an empty reason (which gives the attempt back); close the
stream; then store the replies that were held back (MarkProcessed needs no lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

import grpc

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import IncomingMessage, Responder
from ackbot.bot.store_client import StoreClient, is_retryable, open_channel
from ackbot.common.backoff import RECONNECT_BACKOFF, release_retry_after
from ackbot.common.limits import (
    DEFAULT_MAX_TEXT_BYTES,
    MAX_REASON_CHARS,
    REPLY_LIMIT_METADATA,
    fit_text,
)
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

# MarkProcessed carries a reply that may have cost an LLM call: worth retrying for a while even
# with a short lease, since it is keyed by id and needs no lease.
MIN_MARK_BUDGET_SECONDS = 30.0
# Handing back unstarted deliveries must not hold up shutdown for long; a hand-back that does not
# get through only costs the message one attempt.
HAND_BACK_BUDGET_SECONDS = 5.0
# How long shutdown waits, once the stream is closed, for the replies it held back to be stored.
SETTLE_AFTER_CLOSE_SECONDS = 10.0
_LEASE_GONE = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})

ConnectionCallback = Callable[[bool], Awaitable[None]]


@dataclass(eq=False)
class _Job:
    delivery: pb.Delivery
    # Which stream brought it: when that stream breaks, the store has already taken the lease back.
    generation: int
    received_at: float
    task: asyncio.Task[None] | None = None
    started: bool = False
    # Set once the responder is done with it (or gave up): what the shutdown grace period awaits.
    replied: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def message_id(self) -> str:
        return self.delivery.message.id


def to_incoming(delivery: pb.Delivery) -> IncomingMessage:
    message = delivery.message
    create_time: datetime | None = None
    if message.HasField("create_time"):
        with contextlib.suppress(ValueError, OverflowError):
            create_time = message.create_time.ToDatetime(tzinfo=UTC)
    return IncomingMessage(
        id=message.id,
        author=message.author,
        text=message.text,
        attempt=delivery.attempt,
        create_time=create_time,
    )


def failure_reason(exc: BaseException) -> str:
    """The reason kept as the message's last error: type and text, within the store's rules."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return fit_text(text)[:MAX_REASON_CHARS]


def reply_limit(headers: grpc.aio.Metadata | None) -> int:
    """The store's text limit from a stream's initial metadata; a store too old to send it
    enforces the contract's default."""
    value = headers.get(REPLY_LIMIT_METADATA) if headers is not None else None
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return DEFAULT_MAX_TEXT_BYTES


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
    ) -> None:
        self._config = config
        self._responder = responder
        self._on_connection = on_connection
        self._clock = clock
        self._client: StoreClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._stopping = False
        self._connected = False
        self._generation = 0
        self._live_generation: int | None = None
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._stream_closed = asyncio.Event()
        self._jobs: set[_Job] = set()
        self._held: list[_Job] = []
        self._run_task: asyncio.Task[None] | None = None
        # The longest reply text the store accepts; each stream's headers say (see _read_forever).
        self._max_reply_bytes = DEFAULT_MAX_TEXT_BYTES

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
        channel = open_channel(config.store)
        self._client = StoreClient(channel)
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
            await channel.close()
            self._done.set()
            log.info("worker stopped")

    # -- shutdown ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        self._stopping = True
        started = self._clock()
        for job in list(self._jobs):
            if not job.started and job.task is not None:
                # Still waiting for a slot: never started, so it is handed back below.
                job.task.cancel()
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
        self._close_stream()
        # Replies that finished during the drain were held back until now (see _answer).
        settling = [job.task for job in self._jobs if job.task is not None and not job.task.done()]
        if settling:
            _, late_settles = await asyncio.wait(settling, timeout=SETTLE_AFTER_CLOSE_SECONDS)
            for task in late_settles:
                task.cancel()
            if late_settles:
                log.warning("gave up settling %d replies on shutdown", len(late_settles))
                await asyncio.wait(late_settles)
        log.info("drained in %.2fs", self._clock() - started)

    async def _hand_back(self) -> None:
        held, self._held = self._held, []
        live = [job for job in held if job.generation == self._live_generation]
        if live:
            await asyncio.gather(*(self._hand_back_one(job) for job in live))

    async def _hand_back_one(self, job: _Job) -> None:
        assert self._client is not None
        try:
            await self._client.release(
                job.message_id,
                job.delivery.lease_token,
                reason="",
                retry_after_seconds=0.0,
                budget_seconds=HAND_BACK_BUDGET_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "could not hand back (%s: %s) message_id=%s",
                exc.code().name,
                exc.details(),
                job.message_id,
            )
        else:
            log.info("handed back unstarted delivery message_id=%s", job.message_id)

    def _close_stream(self) -> None:
        # Last of all: closing the stream makes the store release every lease it still holds.
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._stream_closed.set()

    # -- the stream -------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        assert self._client is not None
        config = self._config
        retry = 0
        while not self._stop_requested.is_set():
            self._generation += 1
            generation = self._generation
            self._call = call = self._client.stream(
                consumer=config.consumer,
                max_in_flight=config.max_in_flight,
                lease_seconds=config.lease_seconds,
            )
            was_up = False
            try:
                # The store sends headers as soon as the stream starts, so this returns when the
                # stream is established; if the store is unreachable the call is already over.
                headers = await call.initial_metadata()
                if not call.done():
                    self._max_reply_bytes = reply_limit(headers)
                    was_up = True
                    retry = 0
                    self._live_generation = generation
                    await self._set_connected(True)
                    log.info("stream open to %s as consumer %s", config.store, config.consumer)
                async for response in call:
                    for delivery in response.deliveries:
                        self._accept(delivery, generation)
                problem = "the store ended the stream"
            except grpc.aio.AioRpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            finally:
                if self._call is call:
                    self._call = None
                call.cancel()
            await self._set_connected(False)
            self._forget(generation)
            if self._stop_requested.is_set():
                self._stream_closed.set()  # replies held back for it need not wait any longer
                break
            pause = RECONNECT_BACKOFF.delay(retry)
            retry += 1
            if was_up:
                log.warning(
                    "stream to %s broke (%s); reconnecting in %.2fs", config.store, problem, pause
                )
            else:
                log.warning(
                    "store %s unavailable (%s); retry %d in %.2fs",
                    config.store,
                    problem,
                    retry,
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
        held = [job for job in self._held if job.generation == generation]
        self._held = [job for job in self._held if job.generation != generation]
        for job in [*dropped, *held]:
            log.info("dropped unstarted delivery of a closed stream message_id=%s", job.message_id)

    def _accept(self, delivery: pb.Delivery, generation: int) -> None:
        job = _Job(delivery, generation, received_at=self._clock())
        log.debug("received message_id=%s attempt=%d", delivery.message.id, delivery.attempt)
        if self._stopping:
            # Held, not released at once: a released message would come straight back on this
            # still-open stream. All held deliveries are handed back together at the end.
            self._held.append(job)
            return
        job.task = asyncio.create_task(self._run_job(job), name=f"reply {job.message_id}")
        self._jobs.add(job)
        job.task.add_done_callback(lambda _task: self._jobs.discard(job))

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
        async with self._slots:
            if self._stopping:  # shutdown began while this job waited for its slot
                if job not in self._held:
                    self._held.append(job)
                return
            job.started = True
            try:
                await self._answer(job)
            except Exception:
                log.exception("unexpected error while answering message_id=%s", job.message_id)

    async def _answer(self, job: _Job) -> None:
        work = asyncio.create_task(self._ask(to_incoming(job.delivery)))
        keeper = asyncio.create_task(self._keep_lease(job))
        try:
            await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # The keeper returns only when the lease is lost: another bot may be answering
                # by now, and this answer would be the second.
                log.warning("abandoning the reply: lease lost message_id=%s", job.message_id)
                return
            job.replied.set()
            succeeded = not work.cancelled() and work.exception() is None
            if succeeded and self._stopping and not self._stream_closed.is_set():
                # Settling now would make room on the stream, and the store would fill it with
                # a delivery that the closing stream then counts as a wasted attempt. The reply
                # waits (its lease still kept) until the stream is closed: MarkProcessed needs
                # no lease, and if another bot got the message meanwhile, the first reply wins.
                log.debug(
                    "reply ready; sending it once the stream is closed message_id=%s",
                    job.message_id,
                )
                await self._stream_closed.wait()
        finally:
            job.replied.set()
            pending = [task for task in (work, keeper) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if work.cancelled():
            await self._release_failed(job, asyncio.CancelledError("the responder was cancelled"))
            return
        exc = work.exception()
        if exc is not None:
            await self._release_failed(job, exc)
            return
        await self._mark(job, work.result())

    async def _ask(self, message: IncomingMessage) -> str | None:
        result: object = self._responder.reply(message)
        if inspect.isawaitable(result):
            result = await result
        if result is not None and not isinstance(result, str):
            raise TypeError(f"reply() returned {type(result).__name__}, expected str or None")
        return result

    async def _keep_lease(self, job: _Job) -> None:
        """Extends the lease every half lease; returns only when the lease is lost."""
        assert self._client is not None
        lease = self._config.lease_seconds
        # Counted from receipt, on our own clock: the store's expiry time is on its clock.
        expires = job.received_at + lease
        while True:
            await asyncio.sleep(max(0.0, expires - lease / 2 - self._clock()))
            sent = self._clock()
            try:
                await self._client.extend(
                    job.message_id,
                    job.delivery.lease_token,
                    lease_seconds=lease,
                    budget_seconds=max(expires - sent, 0.0),
                )
            except grpc.aio.AioRpcError as exc:
                # A retryable code here means the retries already ran until the lease expired.
                remaining = expires - self._clock()
                if exc.code() in _LEASE_GONE or is_retryable(exc) or remaining < 0.1:
                    log.warning(
                        "lease lost (%s: %s) message_id=%s",
                        exc.code().name,
                        exc.details(),
                        job.message_id,
                    )
                    return
                log.warning(
                    "ExtendLease failed (%s: %s); trying again message_id=%s",
                    exc.code().name,
                    exc.details(),
                    job.message_id,
                )
                await asyncio.sleep(min(1.0, remaining / 2))
            else:
                expires = sent + lease
                log.debug("lease extended by %gs message_id=%s", lease, job.message_id)

    async def _mark(self, job: _Job, text: str | None) -> None:
        assert self._client is not None
        message_id = job.message_id
        reply_text = fit_text(text, self._max_reply_bytes) if text else ""
        if text and reply_text != text:
            log.warning(
                "reply cut to the store's limits (%d -> %d bytes) message_id=%s",
                len(text.encode("utf-8", errors="surrogatepass")),
                len(reply_text.encode("utf-8")),
                message_id,
            )
        reply = pb.Message(author=self._config.persona, text=reply_text) if reply_text else None
        try:
            response = await self._client.mark_processed(
                message_id,
                job.delivery.lease_token,
                reply,
                budget_seconds=max(self._config.lease_seconds, MIN_MARK_BUDGET_SECONDS),
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                log.warning("message no longer exists; dropped message_id=%s", message_id)
            elif code == grpc.StatusCode.INVALID_ARGUMENT:
                # Retrying the same reply cannot help; releasing with the reason lets the
                # message go DEAD after max_attempts instead of looping.
                log.error(
                    "the store rejected the reply (%s) message_id=%s", exc.details(), message_id
                )
                await self._release_failed(job, exc)
            else:
                log.error(
                    "MarkProcessed failed (%s: %s); the message will be delivered again "
                    "message_id=%s",
                    code.name,
                    exc.details(),
                    message_id,
                )
            return
        if response.already_processed:
            log.info(
                "duplicate prevented: already answered (reply_id=%s) message_id=%s",
                response.reply.id or "-",
                message_id,
            )
        elif reply is None:
            log.info("processed without a reply message_id=%s", message_id)
        else:
            log.info(
                "answered attempt=%d reply_id=%s message_id=%s",
                job.delivery.attempt,
                response.reply.id,
                message_id,
            )

    async def _release_failed(self, job: _Job, exc: BaseException) -> None:
        assert self._client is not None
        message_id = job.message_id
        retry_after = release_retry_after(job.delivery.attempt, self._config.retry_base_seconds)
        reason = failure_reason(exc)
        log.warning(
            "reply failed on attempt %d (%s); releasing, retry after %.1fs message_id=%s",
            job.delivery.attempt,
            reason,
            retry_after,
            message_id,
        )
        log.debug("responder traceback message_id=%s", message_id, exc_info=exc)
        try:
            await self._client.release(
                message_id,
                job.delivery.lease_token,
                reason=reason,
                retry_after_seconds=retry_after,
                budget_seconds=self._config.lease_seconds,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.info("lease already moved on; dropped message_id=%s", message_id)
            elif err.code() == grpc.StatusCode.NOT_FOUND:
                log.warning("message no longer exists; dropped message_id=%s", message_id)
            else:
                log.error(
                    "ReleaseMessage failed (%s: %s); the lease will expire instead message_id=%s",
                    err.code().name,
                    err.details(),
                    message_id,
                )
