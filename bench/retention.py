"""The retention sweep on a large database (issue 19): a store's sweeper removes a table of
settled messages (the bench fill: answered pairs, an original and its reply each) while a
producer creates at a fixed rate, and the creates' p99 during the sweep is reported beside their
p99 on the same database with no sweep running.

Two runs of the same filled file: first the store without --retain-processed (the creates'
p99 on its own), then the store again with it, creating at the same rate from its start until
the sweeper's metric says it removed every filled row.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import grpc

from ackbot.testing import Service, store_service, wait_until
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from bench.paced import Paced, p99, paced_creates

Figures = dict[str, Any]
RATE_PER_SECOND = 200.0
BASELINE_SECONDS = 10.0
# A million rows take minutes to remove on a loaded 2-core machine; far beyond that is a hang.
SWEEP_WITHIN_SECONDS = 1800.0
REMOVED_LINE = re.compile(r"retention removed (\d+) PROCESSED messages")


async def _creates_until(service: Service, done: Any, prefix: str) -> tuple[Paced, float]:
    """Creates at RATE_PER_SECOND on `service` until `done()` is true; the latencies and how
    long it took."""
    paced = Paced()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        producer = asyncio.create_task(
            paced_creates(stub, RATE_PER_SECOND, stop, paced, prefix=prefix)
        )
        started = time.monotonic()
        try:
            await wait_until(done, within=SWEEP_WITHIN_SECONDS, interval=0.2, what=prefix)
        finally:
            stop.set()
            await producer
    return paced, time.monotonic() - started


def _summary(paced: Paced) -> Figures:
    return {
        "creates": len(paced.latency_ms),
        "errors": len(paced.errors),
        "p99_ms": p99(paced.latency_ms),
    }


async def sweep(ctx: Any, *, filled_store: Any) -> Figures:
    """`filled_store(ctx, name, total, pending, sample)` -> (folder, Filled): workloads.py's."""
    size = ctx.settings.sweep_messages
    folder, filled = await filled_store(ctx, "sweep", size, 0, 0)
    db_path = folder / "store.db"

    plain = store_service(folder, db_path=db_path, name="plain", args=["--log-level", "INFO"])
    await plain.astart()
    try:
        began = time.monotonic()
        baseline, _ = await _creates_until(
            plain, lambda: time.monotonic() - began >= BASELINE_SECONDS, "baseline"
        )
    finally:
        await asyncio.to_thread(plain.cleanup)

    sweeping = store_service(
        folder,
        db_path=db_path,
        name="sweeping",
        args=["--log-level", "INFO", "--retain-processed", "1s", "--sweep-seconds", "3600"],
    )
    await sweeping.astart()
    try:
        during, seconds = await _creates_until(
            sweeping, lambda: REMOVED_LINE.search(sweeping.log_text()), "during"
        )
        found = REMOVED_LINE.search(sweeping.log_text())
        removed = int(found.group(1)) if found else 0
    finally:
        await asyncio.to_thread(sweeping.cleanup)
    return {
        "settled_rows": size,
        # What the sweeper says it removed (the fill's rows, originals and replies).
        "removed": removed,
        "fill_seconds": filled.seconds,
        "sweep_seconds": seconds,
        "rows_removed_per_second": size / seconds if seconds else None,
        "rate_per_second": RATE_PER_SECOND,
        "without_sweep": _summary(baseline),
        "during_sweep": _summary(during),
    }
