"""Creates at a fixed rate (open loop), each call timed: the latency that other writers see
while a bulk job (an erasure, the retention sweep) runs. Shared by bench/retention.py and the
erasure test (tests/integration/test_erase_author.py).

Open loop: the n-th create starts at `n / rate` seconds whatever the earlier ones are doing,
so a stall shows up as latency instead of slowing the producer down (closed-loop producers
hide exactly the waits this is meant to see).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

CALL_TIMEOUT_SECONDS = 30.0


@dataclass
class Paced:
    """Each create's start (time.monotonic) and latency in ms; the errors, as text."""

    started: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[float]:
        """The latencies of the creates that started in [start, end)."""
        return [
            ms for at, ms in zip(self.started, self.latency_ms, strict=True) if start <= at < end
        ]


def p99(values_ms: Sequence[float]) -> float | None:
    if not values_ms:
        return None
    ordered = sorted(values_ms)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def paced_creates(
    stub: pb_grpc.MessageStoreStub, rate: float, stop: asyncio.Event, paced: Paced, *, prefix: str
) -> None:
    """Creates `rate` messages a second until `stop` is set, into `paced` as they finish;
    waits for those in flight."""
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        request = pb.CreateMessageRequest(
            message=pb.Message(id=f"{prefix}-{n}", author="paced", text=f"paced create {n}")
        )
        started = time.monotonic()
        try:
            await stub.CreateMessage(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            paced.errors.append(f"{exc.code().name}: {exc.details()}")
            return
        paced.started.append(started)
        paced.latency_ms.append((time.monotonic() - started) * 1000)

    began = time.monotonic()
    n = 0
    while not stop.is_set():
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        # Open loop: the next start is due at n / rate, however long the calls take.
        delay = began + n / rate - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)  # pacing
    if tasks:
        await asyncio.gather(*tasks)
