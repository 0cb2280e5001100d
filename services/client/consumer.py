"""`Consumer`: hands each delivery of a StreamUnprocessed stream to a function and settles it.

Built on the bot's store client (ackbot.bot.store_client): its stream and its retrying
MarkProcessed, ReleaseMessage and ExtendLease. Per delivery the handler is awaited while the
lease is extended every half lease; what it returns settles the message: a text is stored as
the reply (MarkProcessed, cut to the store's text limit), None marks it processed without one;
an exception releases it with the exception as its reason and a retry_after that doubles with
each attempt (after `max_attempts` the store makes it DEAD). A broken stream is re-opened with
backoff. `stop()` closes the stream first (so the store sends no more), lets running handlers
finish within `grace_seconds`, and releases the rest without a reason, which gives their
attempt back.
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
        self._reader: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
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
                stream = self._store.stream(
                    consumer=self.settings.consumer,
                    max_in_flight=self.settings.max_in_flight,
                    lease_seconds=self.settings.lease_seconds,
                )
                self._reader = asyncio.create_task(self._read(stream))
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
                stream.cancel()
                if self._stopping.is_set():
                    break
                log.warning("stream ended (%s); reconnecting", stream.end_reason)
                # A stream that opened starts the backoff over; one that never did grows it.
                failures = 0 if self._opened else failures + 1
                pause = RECONNECT_BACKOFF.delay(failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
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
                job.add_done_callback(self._jobs.discard)

    async def _drain(self) -> None:
        if not self._jobs:
            return
        _, late = await asyncio.wait(set(self._jobs), timeout=self.settings.grace_seconds)
        for job in late:
            job.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _handle(self, delivery: pb.Delivery) -> None:
        message_id, token = delivery.message.id, delivery.lease_token
        budget = max(MIN_SETTLE_BUDGET_SECONDS, self.settings.lease_seconds)
        keeper = asyncio.create_task(self._keep_lease(message_id, token))
        try:
            text = await self._handler(delivery)
        except asyncio.CancelledError:
            # Stopped before it finished: handed back unstarted, its attempt not counted.
            await asyncio.shield(
                self._store.release(
                    message_id, token, reason="", retry_after_seconds=0, budget_seconds=5.0
                )
            )
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".replace("\x00", "")[:MAX_REASON_CHARS]
            retry_after = release_retry_after(delivery.attempt, self.settings.retry_base_seconds)
            log.warning("handler failed message_id=%s: %s", message_id, reason)
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
        reply = None
        if text:
            limit = self._max_reply_bytes or DEFAULT_MAX_TEXT_BYTES
            reply = pb.Message(author=self.settings.author, text=fit_text(text, limit))
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
