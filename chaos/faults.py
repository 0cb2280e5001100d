"""The services under test and the seeded fault scheduler that breaks them.

The cluster is one store on a SQLite file, three bots, and two proxies in front of the store: one
for the bots and one for the producers. Producers go through a proxy of their own so that a cut
or stall also loses the answers of creates that did commit: that is the case a client's retry
must survive (a store kill alone only loses answers when it lands mid-call). Their own proxy,
not the bots', so a fault can hit either side on its own.

On PostgreSQL (`db_url`) there are several stores on one database, each with its own pair of
proxies: the first bots stream from one store each and the last from all of them in failover
order, and the producers are spread over the stores, so work created through one store is
delivered by another (woken by NOTIFY), and a killed store's leases must come back through the
survivors' reaper.

A store always comes back on the same port (and database), so bots and producers reconnect
to it without being told anything. Faults run one after another: each one, including a restart
and the wait for the restarted service to be ready, is over before the next starts, so the run
never ends with a service left down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import grpc

from ackbot.testing import RPC_TIMEOUT, Service, bot_service, store_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .postgres import asyncpg_dsn
from .proxy import TcpProxy

log = logging.getLogger(__name__)

PERSONAS = ("chaos-a", "chaos-b", "chaos-c")
# What a store logs when it finds another one dead and hands back its leases (registry.py).
REAPED_LINE = ") is dead: "
# How long after a store's SIGKILL the run waits to see it declared dead: far beyond the 5 s
# target, so a slow reap is measured, not cut off.
REAP_WATCH_SECONDS = 30.0

# A stalled store (SIGSTOP) stays stopped this long: beyond the stores' 3 s dead-after time, so
# the others declare it dead and end its sessions, and it stops by itself once it runs again.
STORE_STALL_SECONDS = (4.0, 8.0)
# How long the fault tries to catch the store holding the insert turn before it stops it
# wherever it is.
CATCH_SECONDS = 5.0
# How long a store woken from a stall may take to find it was declared dead and exit.
WAKE_EXIT_SECONDS = 30.0
# The stores' insert turn (ackbot.store.repository.INSERT_TURN_KEY, "ackbot:s"), as pg_locks
# shows a bigint advisory key: its high and low 32 bits.
_INSERT_TURN_KEY = int.from_bytes(b"ackbot:s", "big")
_HOLDS_INSERT_TURN = """
SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = $1 AND l.locktype = 'advisory' AND l.granted
  AND l.classid = $2 AND l.objid = $3
"""
_STORE_ID = re.compile(r"registered store=([0-9a-f]+)")

T = TypeVar("T")


async def _pages(stub: pb_grpc.MessageStoreStub, state: pb.MessageState) -> list[pb.Message]:
    messages: list[pb.Message] = []
    token = ""
    while True:
        page = await stub.ListMessages(
            pb.ListMessagesRequest(state=state, page_size=1000, page_token=token),
            timeout=RPC_TIMEOUT,
        )
        messages += page.messages
        token = page.next_page_token
        if not token:
            return messages


async def _half_erased(stub: pb_grpc.MessageStoreStub, ids: set[str]) -> list[str]:
    """What an erasure of `ids` (each answered, with one reply) left readable: one of them, or
    a reply to one. Their tombstones are not counted: a store sweeping tombstones
    (--retain-deleted) may have removed them already, a reply's before its original's."""
    live = await _pages(stub, pb.MESSAGE_STATE_UNSPECIFIED)
    problems = [f"{m.id} not deleted" for m in live if m.id in ids]
    problems += [f"reply {m.id} of {m.reply_to} not deleted" for m in live if m.reply_to in ids]
    return problems


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
    # More than one only on PostgreSQL, where stores can share a database.
    stores: int = 1
    # Each store removes tombstones as soon as they are made (--retain-deleted 0s).
    sweep_tombstones: bool = False


class Cluster:
    def __init__(self, workdir: Path, settings: ClusterSettings, db_url: str | None = None) -> None:
        if settings.stores > 1 and db_url is None:
            raise ValueError("several stores need a shared PostgreSQL database (db_url)")
        self.db_path = workdir / "chaos.db"
        self.db_url = db_url
        self._workdir = workdir
        self._settings = settings
        ports = [free_port() for _ in range(settings.stores)]
        self.stores = [self._store(index, port) for index, port in enumerate(ports)]
        self.bots_proxies = [TcpProxy("127.0.0.1", port) for port in ports]
        self.producers_proxies = [TcpProxy("127.0.0.1", port) for port in ports]
        self.bots: list[Service] = []

    def _store(self, index: int, port: int) -> Service:
        args = ["--listen", f"127.0.0.1:{port}", "--max-attempts", str(self._settings.max_attempts)]
        if self.db_url is not None:
            args += ["--db", self.db_url]
        if self._settings.sweep_tombstones:
            args += ["--retain-deleted", "0s", "--sweep-seconds", "0.5"]
        # One store keeps its historical name (and log file), so the SQLite runs look as before.
        name = "store" if self._settings.stores == 1 else f"store-{'abcdefgh'[index]}"
        return store_service(self._workdir, db_path=self.db_path, name=name, args=args)

    @property
    def store(self) -> Service:
        """The store the run lists and drains through (any would do: they share a database)."""
        return self.stores[0]

    @property
    def bots_proxy(self) -> TcpProxy:
        return self.bots_proxies[0]

    @property
    def producers_proxy(self) -> TcpProxy:
        return self.producers_proxies[0]

    @property
    def services(self) -> list[Service]:
        return [*self.stores, *self.bots]

    def store_logs(self) -> list[str]:
        return [store.log_text() for store in self.stores]

    async def start(self) -> None:
        # One after another: stores starting at once on a new database would race to create
        # its tables (the migrations handle it, but that is another test's subject).
        for store in self.stores:
            await store.astart()
        for proxy in [*self.bots_proxies, *self.producers_proxies]:
            await proxy.start()
        self.bots = [self._bot(index, persona) for index, persona in enumerate(PERSONAS)]
        await asyncio.gather(*(bot.astart() for bot in self.bots))

    def bot_stores(self, index: int) -> list[str]:
        """The proxies bot `index` streams through: its own store's while there are more stores
        than bots before it, else every store in failover order (bot3 `--store A,B`)."""
        proxies = self.bots_proxies
        if index < len(proxies) and len(proxies) > 1:
            return [proxies[index].address]
        if len(proxies) == 1:
            return [proxies[0].address]
        return [proxy.address for proxy in proxies]

    def _bot(self, index: int, persona: str) -> Service:
        return bot_service(
            self._workdir,
            self.bot_stores(index),
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
        for store in self.stores:
            await store.aterminate()
        for proxy in [*self.bots_proxies, *self.producers_proxies]:
            await proxy.close()

    def cleanup(self) -> None:
        """Whatever happened, no process outlives the run."""
        for service in reversed(self.services):
            service.cleanup()


# name -> weight: how often the scheduler picks each fault.
# erase-kill-store (the bulk profiles): an author's answered messages, each with its reply, of
# which an erasure is cut by a SIGKILL of its store; the erasure is then run again to the end.
ERASED_MESSAGES = 400
ERASED_AUTHOR = "chaos-erased-{}"

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
        weights: Mapping[str, int] = FAULT_WEIGHTS,
    ) -> None:
        self._cluster = cluster
        self._weights = dict(weights)
        self._rng = rng
        self._pause = pause_seconds
        self._stall = stall_seconds
        self.counts: Counter[str] = Counter()
        self.cut_connections = 0
        self.timeline: list[str] = []
        # Several stores: seconds from a store's SIGKILL to another store declaring it dead
        # (and handing back its leases), one figure per kill; None where none was seen.
        self.reap_seconds: list[float | None] = []
        # The same from a store's SIGSTOP (stall-store), and how many stalls caught the store
        # holding the insert turn (the others stopped it between transactions).
        self.stall_reap_seconds: list[float | None] = []
        self.stalls_inside_insert = 0
        self._watches: list[asyncio.Task[None]] = []
        # erase-kill-store: what each found wrong (a message deleted without its reply, a
        # reply without its message, a message of the author left).
        self.erase_problems: list[str] = []

    def _pick(self, items: Sequence[T]) -> T:
        # No draw with one choice, so the single-store runs replay the seeds they always did.
        return items[0] if len(items) == 1 else self._rng.choice(items)

    async def finish_watches(self) -> None:
        """Waits for the last kills' reap watches (each ends by its own deadline)."""
        await asyncio.gather(*self._watches)

    async def _watch_reap(
        self, killed_at: float, reaped_before: int, into: list[float | None] | None = None
    ) -> None:
        """Records when the survivors' logs say the killed store is dead. A log poll, not a
        wait the fault depends on: the fault goes on (restart, next fault) meanwhile. It counts
        "is dead" lines, not whose: should a reap outlast the next store kill (kills are seconds
        apart, reaps take about one), that kill's reap could end this watch, understating it."""
        deadline = killed_at + REAP_WATCH_SECONDS
        while time.monotonic() < deadline:
            reaped = sum(text.count(REAPED_LINE) for text in self._cluster.store_logs())
            if reaped > reaped_before:
                (self.reap_seconds if into is None else into).append(
                    round(time.monotonic() - killed_at, 2)
                )
                return
            await asyncio.sleep(0.05)  # poll
        (self.reap_seconds if into is None else into).append(None)

    async def run(self, stop: asyncio.Event, started: float) -> None:
        loop = asyncio.get_running_loop()
        names, weights = zip(*self._weights.items(), strict=True)
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
            store = self._pick(cluster.stores)
            down = rng.uniform(0.1, 2.0)
            reaped_before = sum(text.count(REAPED_LINE) for text in cluster.store_logs())
            await store.akill()
            if len(cluster.stores) > 1:
                watch = self._watch_reap(time.monotonic(), reaped_before)
                self._watches.append(asyncio.create_task(watch))
            await asyncio.sleep(down)  # seeded downtime
            await store.astart()
            where = "file" if cluster.db_url is None else "database"
            named = "" if len(cluster.stores) == 1 else f"{store.name} "
            return f"{named}SIGKILL, down {down:.2f}s, restarted on the same {where} and port"
        if name == "stall-store":
            return await self._stall_store()
        if name == "erase-kill-store":
            return await self._erase_kill_store()
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
            proxies = cluster.bots_proxies if name == "cut-bots" else cluster.producers_proxies
            index = self._pick(range(len(proxies)))
            cut = proxies[index].cut()
            self.cut_connections += cut
            return f"{cut} connections reset{self._which(index)}"
        seconds = rng.uniform(*self._stall)
        if name == "stall-one-bot":
            # One bot partitioned while the others work on: its leases expire, the others take
            # its messages, and its late replies must be refused as duplicates.
            index = self._pick(range(len(cluster.bots_proxies)))
            stalled = await cluster.bots_proxies[index].stall_one(seconds, rng)
            return (
                f"one of the bots' connections {seconds:.2f}s without forwarding"
                f"{self._which(index)}"
                if stalled
                else "no connection open"
            )
        proxies = cluster.bots_proxies if name == "stall-bots" else cluster.producers_proxies
        index = self._pick(range(len(proxies)))
        await proxies[index].stall(seconds)
        return f"{seconds:.2f}s without forwarding{self._which(index)}"

    async def _erase_kill_store(self) -> str:
        """An erasure cut by a SIGKILL of its store after its first batch, then finished on the
        restarted store; checks that no pair was left half deleted. Straight to the store,
        not through a proxy: the cut under test is the kill."""
        store = self._pick(self._cluster.stores)
        author = ERASED_AUTHOR.format(self.counts["erase-kill-store"])
        ids = [f"{author}-{n}" for n in range(ERASED_MESSAGES)]
        reply = pb.Message(author="chaos-eraser", text="answered before the erasure")
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            await stub.BatchCreateMessages(
                pb.BatchCreateMessagesRequest(
                    requests=[
                        pb.CreateMessageRequest(message=pb.Message(id=i, author=author, text="x"))
                        for i in ids
                    ]
                ),
                timeout=RPC_TIMEOUT,
            )
            # Answered here or by a bot first (then this mark is told so): a pair either way.
            await asyncio.gather(
                *(
                    stub.MarkProcessed(
                        pb.MarkProcessedRequest(id=i, reply=reply), timeout=RPC_TIMEOUT
                    )
                    for i in ids
                ),
                return_exceptions=True,
            )
            call = stub.EraseAuthor(pb.EraseAuthorRequest(author=author))
            first = await anext(aiter(call))
            await store.akill()
            call.cancel()
        await asyncio.sleep(self._rng.uniform(0.1, 1.0))  # seeded downtime
        await store.astart()
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            rest = [r async for r in stub.EraseAuthor(pb.EraseAuthorRequest(author=author))]
            problems = await _half_erased(stub, set(ids))
        self.erase_problems += [f"{author}: {problem}" for problem in problems]
        return (
            f"{author}: SIGKILL after {first.deleted_count} deleted, restarted, "
            f"{rest[-1].deleted_count} more; {len(problems)} half-erased"
        )

    async def _stall_store(self) -> str:
        """SIGSTOP of a store while it holds the insert turn, inside an inserting transaction
        (as a frozen VM or a lost host would leave it): the other stores' writes wait for
        that turn, until they declare the stopped store dead and end its sessions. Then
        SIGCONT: it finds its registration gone and stops by itself, and is started again."""
        cluster, rng = self._cluster, self._rng
        if cluster.db_url is None or len(cluster.stores) < 2:
            raise ValueError("stall-store needs several stores on PostgreSQL")
        store = self._pick(cluster.stores)
        assert store.proc is not None  # the faults run between the start and the stop
        seconds = rng.uniform(*STORE_STALL_SECONDS)
        reaped_before = sum(text.count(REAPED_LINE) for text in cluster.store_logs())
        caught = await self._stop_holding_insert_turn(store, cluster.db_url)
        self.stalls_inside_insert += caught
        watch = self._watch_reap(time.monotonic(), reaped_before, self.stall_reap_seconds)
        self._watches.append(asyncio.create_task(watch))
        await asyncio.sleep(seconds)  # seeded stall
        store.proc.send_signal(signal.SIGCONT)
        try:
            code = await asyncio.to_thread(store.proc.wait, WAKE_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            woke = "did not stop after it woke"
        else:
            woke = f"stopped by itself with code {code} after it woke, restarted"
            await store.astart()
        where = "holding the insert turn" if caught else "between transactions"
        return f"{store.name} SIGSTOP {where}, for {seconds:.2f}s; {woke}"

    async def _stop_holding_insert_turn(self, store: Service, db_url: str) -> bool:
        """Stops `store` (SIGSTOP) as soon as one of its sessions is seen holding the insert
        turn, and says whether it still held it once stopped; after CATCH_SECONDS of
        trying, stops it wherever it is."""
        found = _STORE_ID.findall(store.log_text())
        if not found:
            raise RuntimeError(f"{store.name} logged no store id")
        name = f"ackbot-store:{found[-1]}"  # its sessions' application_name (the last start)
        assert store.proc is not None
        classid, objid = _INSERT_TURN_KEY >> 32, _INSERT_TURN_KEY & 0xFFFFFFFF
        connection = await asyncpg.connect(asyncpg_dsn(db_url))
        try:
            deadline = time.monotonic() + CATCH_SECONDS
            while True:
                holds = await connection.fetch(_HOLDS_INSERT_TURN, name, classid, objid)
                if holds or time.monotonic() > deadline:
                    store.proc.send_signal(signal.SIGSTOP)
                    if not holds:
                        return False
                    # It may have committed between the look and the signal: look again.
                    if await connection.fetch(_HOLDS_INSERT_TURN, name, classid, objid):
                        return True
                    store.proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(0.002)  # poll
        finally:
            await connection.close()

    def _which(self, index: int) -> str:
        stores = self._cluster.stores
        return "" if len(stores) == 1 else f" (to {stores[index].name})"
