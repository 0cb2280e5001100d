"""The services under test and the seeded fault scheduler that breaks them.

The cluster is one store on a SQLite file, three bots, and two proxies in front of the store: one
for the bots and one for the producers. Producers go through a proxy of their own so that a cut
or stall also loses the answers of creates that did commit: that is the case a client's retry
must survive (a store kill alone only loses answers when it lands mid-call). Their own proxy,
not the bots', so a fault can hit either side on its own.

The store always comes back on the same port and database file, so bots and producers reconnect
to it without being told anything. Faults run one after another: each one, including a restart
and the wait for the restarted service to be ready, is over before the next starts, so the run
never ends with a service left down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ackbot.testing import Service, bot_service, store_service

from .proxy import TcpProxy

log = logging.getLogger(__name__)

PERSONAS = ("chaos-a", "chaos-b", "chaos-c")


def free_port() -> int:
    """A loopback port nobody listens on now, for a service that must keep its port across
    restarts (port 0 would give each restart a new one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class ClusterSettings:
    max_in_flight: int
    lease_seconds: float
    max_attempts: int


class Cluster:
    def __init__(self, workdir: Path, settings: ClusterSettings) -> None:
        self.db_path = workdir / "chaos.db"
        self.store_port = free_port()
        self.store = store_service(
            workdir,
            db_path=self.db_path,
            name="store",
            args=[
                "--listen",
                f"127.0.0.1:{self.store_port}",
                "--max-attempts",
                str(settings.max_attempts),
            ],
        )
        self.bots_proxy = TcpProxy("127.0.0.1", self.store_port)
        self.producers_proxy = TcpProxy("127.0.0.1", self.store_port)
        self._workdir = workdir
        self._settings = settings
        self.bots: list[Service] = []

    @property
    def services(self) -> list[Service]:
        return [self.store, *self.bots]

    async def start(self) -> None:
        await self.store.astart()
        await self.bots_proxy.start()
        await self.producers_proxy.start()
        self.bots = [self._bot(persona) for persona in PERSONAS]
        await asyncio.gather(*(bot.astart() for bot in self.bots))

    def _bot(self, persona: str) -> Service:
        return bot_service(
            self._workdir,
            self.bots_proxy.address,
            persona=persona,
            max_in_flight=self._settings.max_in_flight,
            lease_seconds=self._settings.lease_seconds,
            responder="chaos.responder:chaos",
            args=[
                # A fixed port: a restarted bot logs the same `listening on` line as before,
                # which is the line the harness waits for.
                "--listen",
                f"127.0.0.1:{free_port()}",
                # Messages made to fail wait base * 2^(attempt-1) between attempts: with this
                # base all max_attempts of them take seconds, so they are DEAD by the drain.
                "--retry-base-seconds",
                "0.01",
            ],
        )

    async def revive(self) -> list[str]:
        """Restarts any service that exited by itself (each fault restarts what it stopped
        before the next begins) and says which ones did, with their exit codes."""
        exited = []
        for service in self.services:
            code = service.proc.poll() if service.proc is not None else None
            if code is not None:
                exited.append(f"{service.name} exited by itself with code {code}")
                log.error("%s", exited[-1])
                await service.astart()
        return exited

    async def stop(self) -> None:
        """Graceful: the bots first, so they can still settle and hand back their work."""
        await asyncio.gather(*(bot.aterminate() for bot in self.bots))
        await self.store.aterminate()
        await self.bots_proxy.close()
        await self.producers_proxy.close()

    def cleanup(self) -> None:
        """Whatever happened, no process outlives the run."""
        for service in reversed(self.services):
            service.cleanup()


# name -> weight: how often the scheduler picks each fault.
FAULT_WEIGHTS = {
    "kill-store": 2,
    "kill-bot": 3,
    "stop-bot": 1,
    "cut-bots": 3,
    "cut-producers": 1,
    "stall-bots": 2,
    "stall-one-bot": 2,
    "stall-producers": 1,
}


class FaultScheduler:
    """Picks a fault and a pause from the seeded `rng` until stopped.

    The seed fixes which faults happen, in which order, how long services stay down and how
    long stalls last; where they land among the messages depends on timing, which no seed fixes.
    """

    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        pause_seconds: tuple[float, float],
        stall_seconds: tuple[float, float],
    ) -> None:
        self._cluster = cluster
        self._rng = rng
        self._pause = pause_seconds
        self._stall = stall_seconds
        self.counts: Counter[str] = Counter()
        self.cut_connections = 0
        self.timeline: list[str] = []

    async def run(self, stop: asyncio.Event, started: float) -> None:
        loop = asyncio.get_running_loop()
        names, weights = zip(*FAULT_WEIGHTS.items(), strict=True)
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self._rng.uniform(*self._pause))
                return
            except TimeoutError:
                pass
            name = self._rng.choices(names, weights)[0]
            began = loop.time() - started
            what = await self._inject(name)
            self.counts[name] += 1
            line = f"{began:7.2f}s to {loop.time() - started:7.2f}s {name}: {what}"
            self.timeline.append(line)
            log.info("%s", line)

    async def _inject(self, name: str) -> str:
        cluster, rng = self._cluster, self._rng
        if name == "kill-store":
            down = rng.uniform(0.1, 2.0)
            await cluster.store.akill()
            await asyncio.sleep(down)  # seeded downtime
            await cluster.store.astart()
            return f"SIGKILL, down {down:.2f}s, restarted on the same file and port"
        if name in ("kill-bot", "stop-bot"):
            bot = rng.choice(cluster.bots)
            down = rng.uniform(0.0, 2.0)
            if name == "kill-bot":
                await bot.akill()
            else:
                await bot.aterminate()
            await asyncio.sleep(down)  # seeded downtime
            await bot.astart()
            signal = "SIGKILL" if name == "kill-bot" else "SIGTERM"
            return f"{bot.name} {signal}, down {down:.2f}s, restarted"
        if name.startswith("cut-"):
            proxy = cluster.bots_proxy if name == "cut-bots" else cluster.producers_proxy
            cut = proxy.cut()
            self.cut_connections += cut
            return f"{cut} connections reset"
        seconds = rng.uniform(*self._stall)
        if name == "stall-one-bot":
            # One bot partitioned while the others work on: its leases expire, the others take
            # its messages, and its late replies must be refused as duplicates.
            stalled = await cluster.bots_proxy.stall_one(seconds, rng)
            return (
                f"one of the bots' connections {seconds:.2f}s without forwarding"
                if stalled
                else "no connection open"
            )
        proxy = cluster.bots_proxy if name == "stall-bots" else cluster.producers_proxy
        await proxy.stall(seconds)
        return f"{seconds:.2f}s without forwarding"
