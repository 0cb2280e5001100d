"""The store's own Prometheus metrics, beside the gRPC ones (ackbot.common.metrics).

Counters and histograms are updated where the event happens (a delivery, a DEAD, a mark's
commit, a group-commit batch). The gauges of messages by state and of the oldest PENDING age
come from `StateSampler`, a background task that asks the database every few seconds: a scrape
never queries, so scraping often or from several Prometheus servers costs the database nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ackbot.common.metrics import GrpcServerMetrics

log = logging.getLogger(__name__)

STATES = ("PENDING", "LEASED", "PROCESSED", "DEAD", "HELD", "DELETED")
SERVICE = "ackbot.v1.MessageStore"
# The store's streaming methods, exported at 0 from the start: an alert on "no bot stream
# open" needs a series that is 0, not one that does not exist yet.
STREAMING_METHODS = ("Consume", "StreamUnprocessed", "WatchMessages")
# Why a delivered message came back for another delivery (ackbot_redeliveries_total{cause}):
# its bot released it after a failure (a reason given), or handed it back unstarted (none); its
# stream ended with the lease held; its lease lapsed unanswered; its store died (reaped by another).
REDELIVERY_CAUSES = ("failed", "handed_back", "stream_ended", "lease_expired", "store_died")
# Latency from a message's arrival to its mark's commit: from tens of milliseconds (a bot
# that answers at once) to minutes (an LLM, a backlog, retries).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Writes per transaction: 1 when idle, up to repository.MAX_BATCH under load.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# How often the state gauges are refreshed.
SAMPLE_SECONDS = 5.0


class StoreMetrics:
    """Everything a store exports, in one registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.grpc = GrpcServerMetrics(registry)
        self.messages = Gauge(
            "ackbot_messages", "messages by state (sampled)", ("state",), registry=registry
        )
        self.oldest_pending_age = Gauge(
            "ackbot_oldest_pending_age_seconds",
            "age of the oldest PENDING message, 0 when there is none (sampled)",
            registry=registry,
        )
        self.deliveries = Counter(
            "ackbot_deliveries", "messages leased to a bot stream", registry=registry
        )
        self.redeliveries = Counter(
            "ackbot_redeliveries",
            "delivered messages made deliverable again, by why their lease ended",
            ("cause",),
            registry=registry,
        )
        self.dead = Counter(
            "ackbot_dead", "messages that became DEAD (out of attempts)", registry=registry
        )
        self.create_to_processed = Histogram(
            "ackbot_create_to_processed_seconds",
            "from a message's receive_time to the commit of its MarkProcessed",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.removed = Counter(
            "ackbot_messages_removed",
            "messages removed for good (replies included), by their state and why: retention "
            "(the sweeper) or purge (PurgeMessages)",
            ("state", "why"),
            registry=registry,
        )
        self.group_commit_batch = Histogram(
            "ackbot_group_commit_batch_size",
            "writes committed together in one transaction",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        for state in STATES:
            self.messages.labels(state)
        for cause in REDELIVERY_CAUSES:
            self.redeliveries.labels(cause)
        for method in STREAMING_METHODS:
            self.grpc.open_streams.labels(SERVICE, method)

    def delivered(self, attempt: int) -> None:
        self.deliveries.inc()

    def redelivery(self, cause: str, count: int = 1) -> None:
        """Counted where the lease ends, the only place that knows why: the row does not say
        why its last lease ended, so a count at the next delivery could not."""
        if count:
            self.redeliveries.labels(cause).inc(count)

    def processed(self, receive_time_ns: int, now_ns: int | None = None) -> None:
        now_ns = time.time_ns() if now_ns is None else now_ns
        self.create_to_processed.observe(max(0.0, (now_ns - receive_time_ns) / 1e9))


Sample = Callable[[], Awaitable[tuple[Mapping[str, int], int | None]]]


class StateSampler:
    """Every `interval` seconds, `sample()` -> (count by state, oldest PENDING receive time in
    ns) into the gauges. A failed sample keeps the last values and is logged at DEBUG: the
    store's own calls report a database that is down."""

    def __init__(
        self,
        metrics: StoreMetrics,
        sample: Sample,
        *,
        interval: float = SAMPLE_SECONDS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._metrics = metrics
        self._sample = sample
        self._interval = interval
        self._now_ns = clock_ns
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        counts, oldest_pending_ns = await self._sample()
        for state in STATES:
            self._metrics.messages.labels(state).set(counts.get(state, 0))
        age = 0.0
        if oldest_pending_ns is not None:
            age = max(0.0, (self._now_ns() - oldest_pending_ns) / 1e9)
        self._metrics.oldest_pending_age.set(age)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-metrics-sampler")

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the next round tries again
                log.debug("metrics sample failed: %s", exc)
            await asyncio.sleep(self._interval)  # pacing

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
