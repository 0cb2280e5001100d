"""The workloads of issue 3, each against real processes, each returning plain JSON-able figures.

Every workload starts its own servers on a fresh database (a workload never measures another's
leftovers) and stops them before it returns, whatever happened. Servers and client load run in
separate processes; the coordinator (this process) only starts them, samples the server's CPU
and memory, and reads the results back through the store's own API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import grpc
import psutil
from sqlalchemy.engine import make_url

from ackbot.testing import (
    PAGE_SIZE,
    RPC_TIMEOUT,
    Service,
    bot_service,
    child_env,
    store_service,
    wait_until,
)
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from bench import echo, fill, oldway, peer, pg_peer, redis_server, retention
from bench.cpu import postgres_window, process_window
from bench.loadgen import (
    STORE_CREATE_METHOD,
    Result,
    Spec,
    percentiles,
    run_child,
    run_loadgen,
)
from bench.responders import SLOW_DELAY_SECONDS
from bench.settings import Settings
from chaos.postgres import asyncpg_dsn, fresh_database

Figures = dict[str, Any]
# The shared Redis, as its owner configured it (the peer reports how durable that is).
REDIS_ADDRESS = "127.0.0.1:6379"
POSTGRES_URL_ENV = "ACKBOT_BENCH_POSTGRES_URL"
POSTGRES_DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# Each PostgreSQL run gets a database of its own, named with this and dropped afterwards.
POSTGRES_DATABASE_PREFIX = "ackbot_bench"
# Lookups not timed before the timed ones: connection set-up and the first page reads.
LOOKUP_WARMUP_CALLS = 100
# Timed lookups go to one size's store this many at a time, then to the next size's.
LOOKUP_BATCH = 50


@dataclass
class Context:
    settings: Settings
    workdir: Path
    env: dict[str, str] = field(default_factory=child_env)
    _names: dict[str, int] = field(default_factory=dict)

    def fresh(self, name: str) -> Path:
        """A new folder for one server's database and log (a name may be used many times)."""
        number = self._names[name] = self._names.get(name, 0) + 1
        path = self.workdir / f"{name}-{number}"
        path.mkdir(parents=True)
        return path


# -- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(*services: Service) -> AsyncIterator[None]:
    """Starts the services in order and stops them all on the way out."""
    try:
        for service in services:
            await service.astart()
        yield
    finally:
        for service in reversed(services):
            await asyncio.to_thread(service.cleanup)


def server_pid(service: Service) -> int:
    assert service.proc is not None
    return service.proc.pid


async def unary_load(
    ctx: Context, server: Service, method: str, concurrency: int, id_prefix: str
) -> Figures:
    """One closed-loop client process against `method`; calls/s and both sides' CPU."""
    cpu = process_window(server_pid(server))
    spec = Spec(
        mode="unary",
        address=server.address,
        method=method,
        concurrency=concurrency,
        warmup_seconds=ctx.settings.warmup_seconds,
        measure_seconds=ctx.settings.measure_seconds,
        id_prefix=id_prefix,
    )
    result = await run_loadgen(spec, ctx.env, on_measuring=cpu.open)
    cpu.close()
    return {
        "concurrency": concurrency,
        "calls_per_second": result.calls / result.seconds,
        "calls": result.calls,
        "errors": result.errors,
        "first_error": result.first_error,
        "server_cpu_percent": cpu.percent,
        "client_cpu_percent": 100 * result.client_cpu_seconds / result.seconds,
        **({"latency": result.latency} if result.latency else {}),
    }


def store_stub(channel: grpc.aio.Channel) -> pb_grpc.MessageStoreStub:
    return pb_grpc.MessageStoreStub(channel)


async def list_all(stub: pb_grpc.MessageStoreStub, state: int = 0) -> list[pb.Message]:
    messages: list[pb.Message] = []
    token = ""
    while True:
        response = await stub.ListMessages(
            pb.ListMessagesRequest(page_size=PAGE_SIZE, page_token=token, state=state),  # type: ignore[arg-type]
            timeout=RPC_TIMEOUT,
        )
        messages.extend(response.messages)
        token = response.next_page_token
        if not token:
            return messages


async def nothing_unsettled(stub: pb_grpc.MessageStoreStub) -> bool:
    for state in (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED):
        response = await stub.ListMessages(
            pb.ListMessagesRequest(page_size=1, state=state), timeout=RPC_TIMEOUT
        )
        if response.messages:
            return False
    return True


async def wait_settled(stub: pb_grpc.MessageStoreStub, within: float) -> None:
    await wait_until(
        lambda: nothing_unsettled(stub), within, interval=0.1, what="no message unsettled"
    )


def answer_figures(
    returned: dict[str, int], committed: dict[str, int], produce_start_ns: int
) -> Figures:
    """Throughput and create-to-reply latency from the producers' return times and the
    replies' commit times (both wall-clock ns on this machine)."""
    answered = [message_id for message_id in returned if message_id in committed]
    latencies = [(committed[m] - returned[m]) / 1e6 for m in answered]
    last_ns = max((committed[m] for m in answered), default=produce_start_ns)
    seconds = (last_ns - produce_start_ns) / 1e9
    return {
        "created": len(returned),
        "answered": len(answered),
        "answered_per_second": len(answered) / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "latency": percentiles(latencies),
    }


def read_times(path: Path) -> dict[str, int]:
    return {message_id: ns for message_id, ns in json.loads(path.read_text())}


async def produce(
    ctx: Context, *, address: str, count: int, concurrency: int = 1, rate: float = 0.0,
    producer: str = "grpc", method: str = STORE_CREATE_METHOD, queue: str = "",
    per_round_trip: int = 1, id_prefix: str, folder: Path,
    on_measuring: Callable[[], None] = lambda: None,
) -> tuple[Result, dict[str, int]]:  # fmt: skip
    """Creates `count` messages through bench.loadgen's `producer` (see its Spec); returns its
    figures and each id's time (ns) at the moment its create returned."""
    times_path = folder / f"{id_prefix}-times.json"
    spec = Spec(
        mode="produce",
        address=address,
        method=method,
        count=count,
        concurrency=concurrency,
        rate_per_second=rate,
        id_prefix=id_prefix,
        times_path=str(times_path),
        producer=producer,
        queue=queue,
        per_round_trip=per_round_trip,
    )
    result = await run_loadgen(spec, ctx.env, on_measuring=on_measuring)
    if result.errors:
        raise RuntimeError(f"{result.errors} creates failed, first: {result.first_error}")
    return result, read_times(times_path)


def settle_deadline(count: int) -> float:
    # Generous: a wedged run fails after this, a slow one finishes.
    return 60.0 + count / 50


# -- 1. the gRPC ceiling ------------------------------------------------------------------------


async def ceiling(ctx: Context) -> Figures:
    server = echo.service(ctx.fresh("echo"))
    figures: Figures = {}
    async with running(server):
        for concurrency in ctx.settings.concurrencies:
            figures[f"unary_c{concurrency}"] = await unary_load(
                ctx, server, echo.CREATE_METHOD, concurrency, f"echo{concurrency}"
            )
        cpu = process_window(server_pid(server))
        spec = Spec(
            mode="stream",
            address=server.address,
            method=echo.STREAM_METHOD,
            warmup_seconds=ctx.settings.warmup_seconds,
            measure_seconds=ctx.settings.measure_seconds,
        )
        result = await run_loadgen(spec, ctx.env, on_measuring=cpu.open)
        cpu.close()
        figures["stream"] = {
            "messages_per_second": result.calls / result.seconds,
            "server_cpu_percent": cpu.percent,
            "client_cpu_percent": 100 * result.client_cpu_seconds / result.seconds,
        }
    return figures


# -- 2. CreateMessage ---------------------------------------------------------------------------


async def create(ctx: Context) -> Figures:
    folder = ctx.fresh("create")
    store = store_service(folder, db_path=folder / "store.db")
    figures: Figures = {}
    async with running(store):
        for concurrency in ctx.settings.concurrencies:
            figures[f"unary_c{concurrency}"] = await unary_load(
                ctx, store, STORE_CREATE_METHOD, concurrency, f"create{concurrency}"
            )
    return figures


# -- 3. end to end ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Producers:
    """How an end-to-end run's producer tasks create messages: through bench.loadgen's
    `producer`, one message per round trip, or `Settings.e2e_per_round_trip` at once."""

    producer: str = "grpc"
    several_per_round_trip: bool = False

    def per_round_trip(self, settings: Settings) -> int:
        return settings.e2e_per_round_trip if self.several_per_round_trip else 1


async def _ackbot_end_to_end(
    ctx: Context, *, count: int, concurrency: int, rate: float, database: str = "",
    producers: Producers = Producers(),
) -> Figures:  # fmt: skip
    """A store (on a fresh SQLite file, or on `database`), one bot, and `count` messages from
    `producers`; throughput, create-to-reply latency and each process's CPU."""
    folder = ctx.fresh("e2e")
    store = store_service(folder, args=["--db", database] if database else [])
    async with running(store):
        bot = bot_service(
            folder, store.address, persona="ackbot", max_in_flight=ctx.settings.bot_max_in_flight
        )
        async with running(bot), grpc.aio.insecure_channel(store.address) as channel:
            stub = store_stub(channel)
            # Which process is busy, and how busy: the first thing to know about a bound. From
            # the first create to the last reply: at a fixed rate a steady state, with a tail of
            # milliseconds; at full speed the backlog's drain included.
            store_cpu = process_window(server_pid(store))
            bot_cpu = process_window(server_pid(bot))
            # On PostgreSQL the database does much of the work, in processes of its own.
            database_cpu = postgres_window()
            windows = (store_cpu, bot_cpu, database_cpu)

            def open_windows() -> None:
                for window in windows:
                    window.open()

            produced, returned = await produce(
                ctx, address=store.address, count=count, concurrency=concurrency, rate=rate,
                producer=producers.producer,
                per_round_trip=producers.per_round_trip(ctx.settings), id_prefix="e2e",
                folder=folder, on_measuring=open_windows,
            )  # fmt: skip
            await wait_settled(stub, settle_deadline(count))
            for window in windows:
                window.close()
            messages = await list_all(stub)
    # process_time is the store's clock when the settling transaction began; it committed
    # (fsync included) a little later, so these latencies understate by that commit's time.
    committed = {m.id: m.process_time.ToNanoseconds() for m in messages if m.reply_id}
    answered = answer_figures(returned, committed, produced.start_ns)
    return {
        **answered,
        "producer_seconds": produced.seconds,
        "creates_per_second": produced.calls / produced.seconds,
        "store_cpu_percent": store_cpu.percent,
        "store_cpu_ms_per_answered": 1e3 * store_cpu.cpu_seconds / max(answered["answered"], 1),
        "bot_cpu_percent": bot_cpu.percent,
        "producer_cpu_percent": 100 * produced.client_cpu_seconds / produced.seconds,
        **({"postgres_cpu_percent": database_cpu.percent} if database else {}),
    }


async def _echo_at_rate(ctx: Context, *, count: int, rate: float) -> Figures:
    """The echo server's CPU per call under the fixed-rate producer: the floor under the
    store's CPU per answered message at that rate (a create costs at least one such call)."""
    folder = ctx.fresh("echo-rate")
    server = echo.service(folder)
    async with running(server):
        cpu = process_window(server_pid(server))
        produced, _ = await produce(
            ctx, address=server.address, method=echo.CREATE_METHOD, count=count, rate=rate,
            id_prefix="echo-rate", folder=folder, on_measuring=cpu.open,
        )  # fmt: skip
        cpu.close()
    return {
        "calls": produced.calls,
        "server_cpu_percent": cpu.percent,
        "server_cpu_ms_per_call": 1e3 * cpu.cpu_seconds / produced.calls,
    }


# The full-speed ackbot runs, by how their producers create messages; report.py sets each beside
# the durable Redis peer's run whose producers work the same way: unary creates beside one XADD
# per round trip, the batching client (ackbot.client's Publisher) beside pipelined XADDs.
E2E_RUNS: dict[str, Producers] = {
    "full_speed": Producers(),
    "batched": Producers("batched", several_per_round_trip=True),
}


async def end_to_end(ctx: Context) -> Figures:
    s = ctx.settings
    figures: Figures = {
        name: await _ackbot_end_to_end(
            ctx, count=s.e2e_messages, concurrency=s.e2e_producers, rate=0.0, producers=producers
        )
        for name, producers in E2E_RUNS.items()
    }
    rate, count = s.e2e_rate_per_second, s.e2e_rate_messages
    figures["fixed_rate"] = {
        "rate_per_second": rate,
        **await _ackbot_end_to_end(ctx, count=count, concurrency=1, rate=rate),
        # The same load against the echo server, right after: its CPU per call is the baseline
        # of the store's CPU per answered message.
        "echo": await _echo_at_rate(ctx, count=count, rate=rate),
    }
    return figures


# -- 6. the Redis Streams peer ------------------------------------------------------------------


async def _redis_run(ctx: Context, address: str, name: str, per_round_trip: int) -> Figures:
    """The end-to-end job on the Redis at `address`: bench.peer's consumer, and the producers
    sending `per_round_trip` XADDs per round trip."""
    s = ctx.settings
    folder = ctx.fresh(f"redis-{name}")
    stream = f"ackbot-bench-{time.time_ns()}"
    replies = f"{stream}:replies"
    client = peer.connect(address)
    try:
        await client.xgroup_create(stream, peer.GROUP, id="0", mkstream=True)
        consumer_spec = peer.ConsumerSpec(
            address=address,
            stream=stream,
            reply_stream=replies,
            count=s.e2e_messages,
            max_in_flight=s.bot_max_in_flight,
        )
        async with consumer_process(ctx, "bench.peer", asdict(consumer_spec)) as consumer:
            produced, returned = await produce(
                ctx, address=address, count=s.e2e_messages, concurrency=s.e2e_producers,
                producer="redis", queue=stream, per_round_trip=per_round_trip,
                id_prefix="redis", folder=folder,
            )  # fmt: skip
            await asyncio.wait_for(consumer, settle_deadline(s.e2e_messages))
        committed = await peer.reply_commit_times(client, replies)
        return {
            **answer_figures(returned, committed, produced.start_ns),
            "per_round_trip": per_round_trip,
            "persistence": await peer.persistence(client),
        }
    finally:
        await client.delete(stream, replies)
        await client.aclose()


@contextlib.asynccontextmanager
async def consumer_process(
    ctx: Context, module: str, spec: dict[str, Any]
) -> AsyncIterator[asyncio.Task[dict[str, Any]]]:
    """A peer's consumer process (bench.loadgen.run_child), yielded once it is ready to consume
    (the bot is ready before ackbot's producers start; the peers' consumers get the same), and
    killed on the way out if it has not finished."""
    ready = asyncio.Event()
    consumer = asyncio.create_task(run_child(module, spec, ctx.env, on_measuring=ready.set))
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({consumer, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not ready.is_set():
            if consumer.done():
                await consumer  # raises the consumer's error
            raise RuntimeError(f"the {module} consumer did not start within 30 s")
        yield consumer
    finally:
        consumer.cancel()  # run_child kills the process when cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


async def redis_peer(ctx: Context) -> Figures:
    """The shared Redis as configured, and a private one as durable as the store (see
    bench.redis_server), with unary and with pipelined producers; a missing one is a note."""
    s = ctx.settings
    figures: Figures = {}
    if peer.redis_reachable(REDIS_ADDRESS):
        figures["shared"] = await _redis_run(ctx, REDIS_ADDRESS, "shared", 1)
    else:
        figures["shared"] = {"skipped": f"no Redis listening at {REDIS_ADDRESS}"}
    if redis_server.binary() is None:
        figures["durable"] = {"skipped": "no redis-server on this machine to start a durable one"}
        return figures
    async with redis_server.durable_redis(ctx.fresh("redis-durable-server")) as address:
        figures["durable"] = await _redis_run(ctx, address, "durable", 1)
        figures["durable_pipelined"] = await _redis_run(
            ctx, address, "durable-pipelined", s.e2e_per_round_trip
        )
    return figures


# -- 9. PostgreSQL: the store on it, and the direct peer ----------------------------------------


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or POSTGRES_DEFAULT_URL


async def postgres_unreachable(url: str) -> str:
    """Why the PostgreSQL server of `url` cannot be used, or "" when it can."""
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=2.0)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        where = make_url(url).render_as_string(hide_password=True)
        return f"no PostgreSQL at {where} ({type(exc).__name__}: {exc}); see {POSTGRES_URL_ENV}"
    await connection.close()
    return ""


async def postgres_end_to_end(ctx: Context) -> Figures:
    """The SQLite end-to-end run's full-speed load, with the store on PostgreSQL."""
    s = ctx.settings
    url = postgres_url()
    if why := await postgres_unreachable(url):
        return {"skipped": why}
    async with fresh_database(url, POSTGRES_DATABASE_PREFIX) as database:
        figures = await _ackbot_end_to_end(
            ctx, count=s.e2e_messages, concurrency=s.e2e_producers, rate=0.0, database=database
        )
        return {**figures, "durability": await pg_peer.durability(asyncpg_dsn(database))}


async def postgres_peer(ctx: Context) -> Figures:
    """The same job and load on a SKIP LOCKED table with asyncpg (bench.pg_peer)."""
    s = ctx.settings
    url = postgres_url()
    if why := await postgres_unreachable(url):
        return {"skipped": why}
    folder = ctx.fresh("pg-peer")
    table = "queue"
    async with fresh_database(url, POSTGRES_DATABASE_PREFIX) as database:
        dsn = asyncpg_dsn(database)
        await pg_peer.create_queue(dsn, table)
        database_cpu = postgres_window()
        consumer_spec = pg_peer.ConsumerSpec(
            dsn=dsn, table=table, count=s.e2e_messages, max_in_flight=s.bot_max_in_flight
        )
        async with consumer_process(ctx, "bench.pg_peer", asdict(consumer_spec)) as consumer:
            produced, returned = await produce(
                ctx, address=dsn, count=s.e2e_messages, concurrency=s.e2e_producers,
                producer="postgres", queue=table, id_prefix="pg", folder=folder,
                on_measuring=database_cpu.open,
            )  # fmt: skip
            consumed = await asyncio.wait_for(consumer, settle_deadline(s.e2e_messages))
        database_cpu.close()
        committed = await pg_peer.reply_commit_times(dsn, table)
        durability = await pg_peer.durability(dsn)
    figures = answer_figures(returned, committed, produced.start_ns)
    return {
        **figures,
        "producer_seconds": produced.seconds,
        "durability": durability,
        "postgres_cpu_percent": database_cpu.percent,
        "consumer_cpu_percent": 100 * consumed["cpu_seconds"] / consumed["seconds"],
        "producer_cpu_percent": 100 * produced.client_cpu_seconds / produced.seconds,
    }


# -- 4. lookup cost vs size ---------------------------------------------------------------------


async def _filled_store(
    ctx: Context, name: str, total: int, pending: int, sample: int
) -> tuple[Path, fill.Filled]:
    """A database made by the store, then filled directly; returns its folder."""
    folder = ctx.fresh(name)
    db_path = folder / "store.db"
    async with running(store_service(folder, db_path=db_path, name="schema")):
        pass  # the store creates its schema on start; stopping it frees the file for the fill
    return folder, await asyncio.to_thread(fill.fill, db_path, total, pending, sample)


async def _timed(call: Callable[..., Awaitable[Any]], requests: Sequence[Any]) -> list[float]:
    """Milliseconds of each call, one after another (an idle system's latency)."""
    latencies = []
    for request in requests:
        started = time.perf_counter()
        await call(request, timeout=RPC_TIMEOUT)
        latencies.append((time.perf_counter() - started) * 1e3)
    return latencies


async def lookup(ctx: Context) -> Figures:
    """Every size's store runs at once and the timed calls go round them in small batches, so
    a burst of load from elsewhere on the machine hits all sizes alike instead of one."""
    s = ctx.settings
    rng = random.Random(4)
    calls = s.lookup_samples + LOOKUP_WARMUP_CALLS
    filled: dict[int, fill.Filled] = {}
    stores: dict[int, Service] = {}
    for size in s.lookup_sizes:
        # Half the table at most is PENDING (at 1k that caps the MarkProcessed calls).
        pending = min(calls, size // 2)
        folder, filled[size] = await _filled_store(ctx, f"lookup{size}", size, pending, calls)
        stores[size] = store_service(folder, db_path=folder / "store.db")
    reply = pb.Message(author="bench", text="benchmark reply")
    get_ms: dict[int, list[float]] = {size: [] for size in stores}
    mark_ms: dict[int, list[float]] = {size: [] for size in stores}
    async with running(*stores.values()), contextlib.AsyncExitStack() as channels:
        stubs = {
            size: store_stub(
                await channels.enter_async_context(grpc.aio.insecure_channel(store.address))
            )
            for size, store in stores.items()
        }
        get_ids = {
            size: [rng.choice(f.sample_ids) for _ in range(calls)] for size, f in filled.items()
        }
        mark_ids = {
            size: rng.sample(f.pending_ids, len(f.pending_ids)) for size, f in filled.items()
        }
        for start in range(0, calls, LOOKUP_BATCH):
            order = list(stores)
            rng.shuffle(order)
            for size in order:
                batch = slice(start, start + LOOKUP_BATCH)
                get_ms[size] += await _timed(
                    stubs[size].GetMessage,
                    [pb.GetMessageRequest(id=m) for m in get_ids[size][batch]],
                )
                mark_ms[size] += await _timed(
                    stubs[size].MarkProcessed,
                    [pb.MarkProcessedRequest(id=m, reply=reply) for m in mark_ids[size][batch]],
                )
    return {
        str(size): {
            "fill_seconds": filled[size].seconds,
            "get": _latency_summary(get_ms[size][LOOKUP_WARMUP_CALLS:]),
            "mark_processed": _latency_summary(mark_ms[size][LOOKUP_WARMUP_CALLS:]),
        }
        for size in stores
    }


def _latency_summary(latencies_ms: list[float]) -> Figures:
    return {
        "calls": len(latencies_ms),
        "mean_ms": statistics.fmean(latencies_ms),
        **percentiles(latencies_ms),
    }


# -- 5. slow responder --------------------------------------------------------------------------


async def slow_responder(ctx: Context) -> Figures:
    s = ctx.settings
    folder = ctx.fresh("slow")
    store = store_service(folder, db_path=folder / "store.db")
    async with running(store), grpc.aio.insecure_channel(store.address) as channel:
        stub = store_stub(channel)
        # A backlog first, so the bot is never short of work: the bound is then the bot's.
        await produce(
            ctx, address=store.address, count=s.slow_messages, concurrency=s.e2e_producers,
            id_prefix="slow", folder=folder,
        )  # fmt: skip
        bot = bot_service(
            folder,
            store.address,
            persona="slowbot",
            max_in_flight=s.slow_max_in_flight,
            responder="bench.responders:slow",
        )
        async with running(bot):
            await wait_settled(stub, settle_deadline(s.slow_messages))
        messages = await list_all(stub)
    done_ns = sorted(m.process_time.ToNanoseconds() for m in messages if m.reply_id)
    # The first replies were delivered one delay before they committed: that is when work began.
    seconds = (done_ns[-1] - done_ns[0]) / 1e9 + SLOW_DELAY_SECONDS
    bound = s.slow_max_in_flight / SLOW_DELAY_SECONDS
    achieved = len(done_ns) / seconds
    return {
        "answered": len(done_ns),
        "max_in_flight": s.slow_max_in_flight,
        "delay_seconds": SLOW_DELAY_SECONDS,
        "answered_per_second": achieved,
        "littles_law_bound_per_second": bound,
        "ratio": achieved / bound,
    }


# -- 7. the old way -----------------------------------------------------------------------------


async def old_way(ctx: Context) -> Figures:
    s = ctx.settings
    figures: Figures = {}
    for size in s.oldway_sizes:
        result = await asyncio.to_thread(
            oldway.measure, size, s.oldway_max_samples, s.oldway_budget_seconds
        )
        figures[str(size)] = asdict(result)
    return figures


# -- 8. memory ----------------------------------------------------------------------------------


class RssSampler:
    """Samples a process's resident set size until stopped; keeps the series and the peak."""

    def __init__(self, pid: int, interval: float) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._started = time.monotonic()
        self.series: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rss = self._process.memory_info().rss / 2**20
            self.series.append((time.monotonic() - self._started, rss))
            # Deliberate pacing of the sampler, not a wait for a condition.
            await asyncio.sleep(self._interval)

    @property
    def peak_mb(self) -> float:
        return max(mb for _, mb in self.series)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, psutil.NoSuchProcess):
            await self._task


async def memory(ctx: Context) -> Figures:
    s = ctx.settings
    folder, filled = await _filled_store(ctx, "memory", s.memory_messages, s.memory_backlog, 1)
    store = store_service(folder, db_path=folder / "store.db")
    async with running(store), grpc.aio.insecure_channel(store.address) as channel:
        stub = store_stub(channel)
        sampler = RssSampler(server_pid(store), s.rss_sample_seconds)
        try:
            await stub.GetMessage(pb.GetMessageRequest(id=filled.pending_ids[0]))
            idle_mb = psutil.Process(server_pid(store)).memory_info().rss / 2**20
            bot = bot_service(
                folder, store.address, persona="membot", max_in_flight=s.memory_max_in_flight
            )
            started = time.monotonic()
            async with running(bot):
                with contextlib.suppress(TimeoutError):
                    await wait_settled(stub, s.memory_stream_seconds)
                streamed_seconds = time.monotonic() - started
        finally:
            await sampler.stop()
        left = len(await list_all(stub, pb.MESSAGE_STATE_PENDING))
    answered = len(filled.pending_ids) - left
    return {
        "messages": filled.rows,
        "backlog": len(filled.pending_ids),
        "fill_seconds": filled.seconds,
        "rss_idle_mb": idle_mb,
        "rss_peak_mb": sampler.peak_mb,
        "backlog_answered": answered,
        "stream_seconds": streamed_seconds,
        "answered_per_second": answered / streamed_seconds,
        "rss_series": [(round(t, 2), round(mb, 1)) for t, mb in sampler.series[::4]],
    }


async def web_front_door(ctx: Context) -> dict[str, Any]:
    """bench.web in this run (issue 20): PostComment over HTTP/1.1 through ackbot-web beside
    CreateMessage over gRPC to the same store, then one thread watched by many viewers."""
    from bench import web

    args = argparse.Namespace(
        seconds=ctx.settings.measure_seconds,
        concurrency=ctx.settings.web_concurrency,
        viewers=ctx.settings.web_viewers,
    )
    return await web.run(args, ctx.fresh("web"))


WORKLOADS: dict[str, Callable[[Context], Any]] = {
    "ceiling": ceiling,
    "create": create,
    "e2e": end_to_end,
    "redis": redis_peer,
    "postgres_peer": postgres_peer,
    "postgres_e2e": postgres_end_to_end,
    "lookup": lookup,
    "slow": slow_responder,
    "oldway": old_way,
    "memory": memory,
    "sweep": lambda ctx: retention.sweep(ctx, filled_store=_filled_store),
    "web": web_front_door,
}
# A figure and the baseline it is a ratio of, measured in the same run: running one runs both.
BASELINES = {"create": "ceiling", "e2e": "redis", "postgres_e2e": "postgres_peer"}
