"""The lease keeper: one loop that extends the lease of every delivery a consumer holds (the
Pub/Sub subscriber's Leaser), rather than a task per message.

Each held lease is due for ExtendLease at half its length, counted from receipt on the
consumer's own clock (the store's expiry time is on its clock). Whatever is due in one pass (or
within a tenth of a lease of it) is extended together, in one turn of the event loop, so on a
Consume session they travel in one request and the store writes them in one transaction. A
lease whose extension failed for good (LEASE_GONE, NOT_FOUND, or UNAVAILABLE until it expired)
is not given up at once: a store that restarted hands the message out again, most likely to
this consumer, and the redelivery joins the running work (`renewed`). Only when none came within
a lease (at least MIN_REDELIVERY_WAIT_SECONDS) is the delivery reported lost (`on_lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ackbot.client.outcomes import Outcome
from ackbot.client.router import StoreClient

if TYPE_CHECKING:
    from ackbot.client.delivery import Delivery

log = logging.getLogger(__name__)

# What ExtendLease outcomes mean the lease is lost. UNAVAILABLE here means the retries already
# ran until the lease expired.
LEASE_LOST = frozenset({Outcome.LEASE_GONE, Outcome.NOT_FOUND, Outcome.UNAVAILABLE})
# A lease lost waits this long (or a lease, if longer) for the message to be delivered to this
# consumer again, as it is after a store restart: the reconnect backoff tops out at 5 s, and a
# store takes a few seconds to start.
MIN_REDELIVERY_WAIT_SECONDS = 10.0


@dataclass(eq=False)
class _Lease:
    delivery: Delivery
    token: str
    # On the consumer's clock.
    expires: float
    due: float
    # An ExtendLease for it is on its way.
    extending: bool = False
    # Lost: waiting for a redelivery to join until then.
    lost_until: float | None = None
    problem: str = ""


class Leaser:
    """Keeps the leases of the deliveries it holds (`hold`, `renewed`, `drop`) while `run()`
    runs; calls `on_lost(delivery)` for one whose lease is lost for good."""

    def __init__(
        self,
        store: StoreClient,
        lease_seconds: float,
        *,
        on_lost: Callable[[Delivery], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._lease_seconds = lease_seconds
        self._on_lost = on_lost
        self._clock = clock
        self._leases: dict[Delivery, _Lease] = {}
        self._wake = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()

    def __contains__(self, delivery: Delivery) -> bool:
        return delivery in self._leases

    def hold(self, delivery: Delivery) -> None:
        """Keeps `delivery`'s lease from now on (a no-op for one held already)."""
        if delivery not in self._leases:
            self._leases[delivery] = self._fresh(delivery)
            self._wake.set()

    def renewed(self, delivery: Delivery) -> None:
        """A redelivery joined `delivery`: its new lease is the one kept from now on."""
        if delivery in self._leases:
            self._leases[delivery] = self._fresh(delivery)
            self._wake.set()

    def drop(self, delivery: Delivery) -> None:
        """Stops keeping `delivery`'s lease (it is being settled, or its work is over)."""
        self._leases.pop(delivery, None)

    def _fresh(self, delivery: Delivery) -> _Lease:
        expires = delivery.received_at + self._lease_seconds
        return _Lease(delivery, delivery.lease_token, expires, expires - self._lease_seconds / 2)

    async def run(self) -> None:
        """The loop; runs until cancelled."""
        try:
            # Leases due this soon go with those due now: a little early costs nothing, and
            # leases received together stay in one batch round after round.
            slack = min(self._lease_seconds / 10, 1.0)
            while True:
                now = self._clock()
                due: list[_Lease] = []
                next_at = math.inf
                for lease in list(self._leases.values()):
                    if lease.extending:
                        continue
                    if lease.lost_until is not None:
                        if now >= lease.lost_until:
                            self._lost(lease)
                        else:
                            next_at = min(next_at, lease.lost_until)
                    elif lease.due <= now + slack:
                        due.append(lease)
                    else:
                        next_at = min(next_at, lease.due)
                if due:
                    for lease in due:
                        lease.extending = True
                    batch = asyncio.create_task(self._extend_all(due), name="extend leases")
                    self._batches.add(batch)
                    batch.add_done_callback(self._batches.discard)
                self._wake.clear()
                timeout = None if math.isinf(next_at) else max(0.0, next_at - self._clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for batch in list(self._batches):
                batch.cancel()

    def _lost(self, lease: _Lease) -> None:
        del self._leases[lease.delivery]
        log.warning("lease lost (%s) message_id=%s", lease.problem, lease.delivery.message_id)
        self._on_lost(lease.delivery)

    async def _extend_all(self, due: list[_Lease]) -> None:
        try:
            await asyncio.gather(*(self._extend(lease) for lease in due))
        finally:
            self._wake.set()

    async def _extend(self, lease: _Lease) -> None:
        length = self._lease_seconds
        message_id = lease.delivery.message_id
        sent = self._clock()
        try:
            result = await self._store.extend(
                message_id,
                lease.token,
                lease_seconds=length,
                budget_seconds=max(lease.expires - sent, 0.0),
            )
        finally:
            lease.extending = False
        if self._leases.get(lease.delivery) is not lease:
            return  # dropped, or renewed by a redelivery meanwhile: that lease is the one kept
        if result.outcome is Outcome.SETTLED:
            lease.expires = sent + length
            lease.due = lease.expires - length / 2
            log.debug("lease extended by %gs message_id=%s", length, message_id)
            return
        remaining = lease.expires - self._clock()
        if result.outcome in LEASE_LOST or remaining < 0.1:
            wait = max(length, MIN_REDELIVERY_WAIT_SECONDS)
            log.info(
                "lease lost (%s); the reply goes on for up to %gs in case the message comes "
                "back message_id=%s",
                result.problem,
                wait,
                message_id,
            )
            lease.lost_until = self._clock() + wait
            lease.problem = result.problem
            return
        log.warning(
            "ExtendLease failed (%s); trying again message_id=%s", result.problem, message_id
        )
        lease.due = self._clock() + min(1.0, remaining / 2)
