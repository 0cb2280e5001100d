"""`Consumer`: hands each delivery of a StreamUnprocessed stream to a function and settles it.

Built on the bot's store client (ackbot.bot.store_client): its stream and its retrying
MarkProcessed, ReleaseMessage and ExtendLease. Per delivery the handler is awaited while the
lease is extended every half lease; what it returns settles the message: a text is stored as
the reply (MarkProcessed, cut to the store's text limit), None marks it processed without one;
an exception releases it with the exception as its reason and a retry_after that doubles with
each attempt (after `max_attempts` the store makes it DEAD). A broken stream is re-opened with
backoff. `stop()` stops reading the stream, lets running handlers finish within
`grace_seconds` and cancels the rest, closes the stream (the store then hands back what was not
settled; a started delivery's attempt counts), and only then settles what finished: a settle
on an open stream would free room that the store fills with a delivery only to waste it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ackbot.bot.store_client import DeliveryStream, Outcome, StoreClient
from ackbot.client.client import Client
from ackbot.common.backoff import RECONNECT_BACKOFF, release_retry_after
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, MAX_REASON_CHARS, fit_text
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

# The delivery to handle -> the reply's text, or None (or "") for "processed, no reply".
Handler = Callable[[pb.Delivery], Awaitable[str | None]]
# A settle carries work already done: worth retrying for a while even with a short lease.
MIN_SETTLE_BUDGET_SECONDS = 30.0


@dataclass(frozen=True)
class ConsumerSettings:
    #: the stream's name in the store's logs
    consumer: str = "ackbot-client"
    #: the author of the replies
    author: str = "ackbot-client"
    #: deliveries handled at once; the store never sends more unsettled ones
    max_in_flight: int = 16
    #: each delivery's lease, extended every half lease while the handler runs
    lease_seconds: float = 60.0
    #: a failed message is retried after base * 2^(attempt-1) s
    retry_base_seconds: float = 1.0
    #: how long running handlers may finish after stop()
    grace_seconds: float = 10.0


class Consumer:
    """`await consumer.run()` until `consumer.stop()`; see the module docstring."""

    def __init__(
        self, client: Client, handler: Handler, settings: ConsumerSettings | None = None
    ) -> None:
        self._store = StoreClient(client.channel)
        self._handler = handler
        self.settings = settings or ConsumerSettings()
        self._jobs: set[asyncio.Task[None]] = set()
        # The jobs whose handler is still running (a finished one may be waiting to settle).
        self._working: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._stream: DeliveryStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Set once the stream is closed on stop: settles made before it would free room that
        # the store fills with a delivery the closing stream then wastes (an attempt).
        self._stream_closed = asyncio.Event()
        self._max_reply_bytes = 0
        self._opened = False

    def stop(self) -> None:
        """Asks `run()` to end; safe to call twice."""
        self._stopping.set()
        if self._reader is not None:
            self._reader.cancel()

    async def run(self) -> None:
        failures = 0
        try:
            while not self._stopping.is_set():
                self._stream = self._store.stream(
                    consumer=self.settings.consumer,
                    max_in_flight=self.settings.max_in_flight,
                    lease_seconds=self.settings.lease_seconds,
                )
                self._reader = asyncio.create_task(self._read(self._stream))
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
                if self._stopping.is_set():
                    break
                self._stream.cancel()
                log.warning("stream ended (%s); reconnecting", self._stream.end_reason)
                # A stream that opened starts the backoff over; one that never did grows it.
                failures = 0 if self._opened else failures + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RECONNECT_BACKOFF.delay(failures))
        finally:
            await self._drain()

    async def _read(self, stream: DeliveryStream) -> None:
        self._opened = await stream.wait_open()
        if not self._opened:
            return
        self._max_reply_bytes = stream.max_reply_bytes
        async for deliveries in stream:
            for delivery in deliveries:
                job = asyncio.create_task(self._handle(delivery))
                self._jobs.add(job)
                self._working.add(job)
                self._idle.clear()
                job.add_done_callback(self._jobs.discard)

    async def _drain(self) -> None:
        """Running handlers get `grace_seconds`; those still running then are cancelled, and
        the stream's close hands their messages back (the attempt counts: they were started).
        Then the stream is closed and the held-back settles are made."""
        if self._working:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.grace_seconds)
        for job in self._working:
            job.cancel()
        if self._stream is not None:
            self._stream.cancel()
        self._stream_closed.set()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    def _done_working(self, job: asyncio.Task[None] | None) -> None:
        self._working.discard(job)
        if not self._working:
            self._idle.set()

    async def _settle_gate(self) -> None:
        if self._stopping.is_set():
            await self._stream_closed.wait()

    async def _handle(self, delivery: pb.Delivery) -> None:
        message_id, token = delivery.message.id, delivery.lease_token
        budget = max(MIN_SETTLE_BUDGET_SECONDS, self.settings.lease_seconds)
        keeper = asyncio.create_task(self._keep_lease(message_id, token))
        try:
            text = await self._handler(delivery)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".replace("\x00", "")[:MAX_REASON_CHARS]
            retry_after = release_retry_after(delivery.attempt, self.settings.retry_base_seconds)
            log.warning("handler failed message_id=%s: %s", message_id, reason)
            self._done_working(asyncio.current_task())
            await self._settle_gate()
            await self._store.release(
                message_id,
                token,
                reason=reason,
                retry_after_seconds=retry_after,
                budget_seconds=budget,
            )
            return
        finally:
            keeper.cancel()
            self._done_working(asyncio.current_task())
        reply = None
        if text:
            limit = self._max_reply_bytes or DEFAULT_MAX_TEXT_BYTES
            reply = pb.Message(author=self.settings.author, text=fit_text(text, limit))
        await self._settle_gate()
        result = await self._store.mark_processed(message_id, token, reply, budget_seconds=budget)
        if result.outcome not in (Outcome.SETTLED, Outcome.ALREADY_PROCESSED):
            log.warning("could not mark message_id=%s: %s", message_id, result.problem)

    async def _keep_lease(self, message_id: str, token: str) -> None:
        half = self.settings.lease_seconds / 2
        while True:
            await asyncio.sleep(half)  # pacing: extend every half lease
            result = await self._store.extend(
                message_id,
                token,
                lease_seconds=self.settings.lease_seconds,
                budget_seconds=half,
            )
            if result.outcome is not Outcome.SETTLED:
                # Lost (expired, moved on): the handler goes on; the first answer still wins.
                log.info("lease lost message_id=%s: %s", message_id, result.problem)
                return
