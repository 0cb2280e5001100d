"""Two real stores on one PostgreSQL database with three bots spread over them (one on each
store, one on both in failover order), producers creating through both, and the figures the
tests record: when each message was created, acknowledged and delivered, and on which store.

Shared by tests/integration/test_two_stores_three_bots.py and
tests/reliability/test_dead_store_on_postgres.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

from ackbot.client.outcomes import is_retryable
from ackbot.testing import RPC_TIMEOUT, Service, bot_service, store_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

STORE_NAMES = ("store-a", "store-b")
# bot persona -> the stores it streams from, by index into STORE_NAMES, in failover order.
BOT_STORES = {"on-a": (0,), "on-b": (1,), "on-ab": (0, 1)}
DELIVERED = re.compile(
    r"^(\S+ \S+) DEBUG ackbot\.store\.manager: delivered message_id=(\S+) ", re.M
)
# A create whose store is gone is retried on the next store after this pause (a client's
# backoff; the ids are the client's, so a retry of a create that did commit is harmless).
RETRY_PAUSE_SECONDS = 0.05

Runner = Callable[[Service], Awaitable[Service]]


def free_port() -> int:
    """A loopback port nobody listens on now, for a store restarted on the same address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_stores(run: Runner, tmp_path: Path, url: str, args: Sequence[str] = ()):
    """Two stores on `url`, each on a fixed port (a restart keeps its address)."""
    stores = []
    for name in STORE_NAMES:
        listen = ["--listen", f"127.0.0.1:{free_port()}"]
        stores.append(
            await run(store_service(tmp_path, name=name, args=["--db", url, *listen, *args]))
        )
    return stores


async def start_bots(run: Runner, tmp_path: Path, stores: Sequence[Service], **options):
    """The three bots of BOT_STORES, started at once; `options` go to bot_service."""
    bots = [
        bot_service(tmp_path, [stores[i].address for i in where], persona=persona, **options)
        for persona, where in BOT_STORES.items()
    ]
    return await asyncio.gather(*(run(bot) for bot in bots))


@dataclass
class Burst:
    """Creates `count` messages from `clients` concurrent clients, half through each store;
    a client whose store does not answer tries the next one (as a bot with `--store A,B`
    would), with the same id and text."""

    stubs: Sequence[pb_grpc.MessageStoreStub]
    count: int
    clients: int = 8
    prefix: str = "burst"
    # Wall-clock seconds (time.time()) of each create's OK answer, and the store that gave it.
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    through: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    created: int = 0

    @property
    def ids(self) -> list[str]:
        return [f"{self.prefix}-{i:05d}" for i in range(self.count)]

    async def run(self, pace_seconds: float = 0.0) -> None:
        ids = self.ids
        await asyncio.gather(
            *(self._client(n, ids[n :: self.clients], pace_seconds) for n in range(self.clients))
        )

    async def _client(self, number: int, ids: Sequence[str], pace_seconds: float) -> None:
        store = number % len(self.stubs)
        for message_id in ids:
            request = pb.CreateMessageRequest(
                message=pb.Message(id=message_id, author=f"c{number}", text=f"hi {message_id}")
            )
            while True:
                try:
                    await self.stubs[store].CreateMessage(request, timeout=RPC_TIMEOUT)
                    break
                except grpc.aio.AioRpcError as exc:
                    if not is_retryable(exc):
                        raise
                    self.retries += 1
                    store = (store + 1) % len(self.stubs)
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)  # pacing: a client's backoff
            self.acknowledged_at[message_id] = time.time()
            self.through[message_id] = store
            self.created += 1
            if pace_seconds:
                await asyncio.sleep(pace_seconds)  # pacing: a burst spread over seconds


def deliveries(stores: Sequence[Service]) -> dict[str, list[tuple[float, int]]]:
    """message id -> [(wall-clock seconds, store index)] of each delivery, from the stores'
    logs (their timestamps are local wall-clock time, to the millisecond)."""
    found: dict[str, list[tuple[float, int]]] = {}
    for index, store in enumerate(stores):
        for stamp, message_id in DELIVERED.findall(store.log_text()):
            when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.setdefault(message_id, []).append((when, index))
    for events in found.values():
        events.sort()
    return found


def percentiles(values: Sequence[float]) -> str:
    """'n=.. p50=..ms p95=..ms max=..ms' (or 'n=0')."""
    if not values:
        return "n=0"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"n={len(ordered)} p50={1000 * statistics.median(ordered):.0f}ms "
        f"p95={1000 * p95:.0f}ms max={1000 * ordered[-1]:.0f}ms"
    )
