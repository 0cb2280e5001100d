"""Stores sharing one PostgreSQL database, measured: how soon a message created through store A
reaches a stream on store B, beside one on A itself, and what the notifications cost creates.

    python -m bench.cross_store [--db URL] [--rate R] [--messages N] [--rounds R] [--repeats K]
                                [--only latency|cost] [--out FILE]

URL names a PostgreSQL server (postgresql+asyncpg://...; default ACKBOT_BENCH_POSTGRES_URL, else
ACKBOT_TEST_POSTGRES_URL). Every run gets a database of its own there, dropped afterwards.

1. Delivery latency. Stores A and B on one database, each polling for other stores' work only
   every 30 s, so only a notification wakes B in time. An open-loop producer (bench.loadgen)
   creates N messages through A at R per second; a reader in this process streams from A (the
   same-store baseline) or from B, and marks each delivery processed as a bot would. The two
   kinds alternate for a few rounds, each on a fresh database. Two latencies per message,
   both on this machine's wall clock:
   - from the create's return to the producer, which came after the commit: a lower bound of
     commit-to-delivery (it leaves out the way back to the producer, ~0.1-1 ms);
   - from the store's receive time, taken when the create's transaction began: an upper bound
     (it adds the transaction itself, group commit's wait included).
2. What NOTIFY costs: CreateMessage calls/s in a closed loop, at concurrency 1 and 64 on one
   store, and 32 on each of two stores at once (two committers, the case the notification
   lock serialises), each against `ackbot-store` and against `bench.quiet_store` (the same
   store with its notifications off), alternating, K times each; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from ackbot.testing import RPC_TIMEOUT, Service, store_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from bench import quiet_store
from bench.loadgen import STORE_CREATE_METHOD, percentiles
from bench.settings import Settings, log_as_deployed
from bench.workloads import Context, produce, running, unary_load
from chaos.postgres import fresh_database

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cross_store.json"
URL_ENVS = ("ACKBOT_BENCH_POSTGRES_URL", "ACKBOT_TEST_POSTGRES_URL")
# Longer than any phase: a delivery in time is a notification's doing, never the poll's.
STORE_ARGS = ["--wake-poll-seconds", "30"]
# The reader never runs out of room, so its own settling never delays a delivery.
READER_MAX_IN_FLIGHT = 1000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cross_store", description=__doc__)
    default_url = next((os.environ[name] for name in URL_ENVS if os.environ.get(name)), None)
    parser.add_argument("--db", default=default_url, help="PostgreSQL server URL")
    parser.add_argument("--rate", type=float, default=100.0, help="creates per second")
    parser.add_argument("--messages", type=int, default=1_000, help="messages per latency run")
    parser.add_argument("--rounds", type=int, default=3, help="latency runs of each kind")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each throughput case")
    parser.add_argument("--measure-seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=("latency", "cost"), help="run one part only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.db:
        parser.error(f"no PostgreSQL URL: pass --db or set {' or '.join(URL_ENVS)}")
    return args


def store(ctx: Context, name: str, url: str, *, quiet: bool = False) -> Service:
    return store_service(
        ctx.fresh(name),
        name=name,
        args=["--db", url, *STORE_ARGS],
        launcher=quiet_store.launcher() if quiet else None,
    )


# -- 1. delivery latency ------------------------------------------------------------------------


@dataclass
class Received:
    at_ns: int  # when the reader had it
    receive_time_ns: int  # the store's clock when the create's transaction began


async def read(address: str, count: int, ready: asyncio.Event) -> dict[str, Received]:
    """Streams from `address` until `count` deliveries came, marking each one processed."""
    received: dict[str, Received] = {}
    marks: set[asyncio.Task[Any]] = set()
    lease = duration_pb2.Duration(seconds=60)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        call = stub.StreamUnprocessed(
            pb.StreamUnprocessedRequest(
                consumer="bench-reader", max_in_flight=READER_MAX_IN_FLIGHT, lease_duration=lease
            )
        )
        # The headers come once the store has opened the stream.
        await asyncio.wait_for(call.initial_metadata(), RPC_TIMEOUT)
        ready.set()
        async for response in call:
            now = time.time_ns()
            for delivery in response.deliveries:
                message = delivery.message
                received[message.id] = Received(now, message.receive_time.ToNanoseconds())
                request = pb.MarkProcessedRequest(id=message.id, lease_token=delivery.lease_token)
                task = asyncio.ensure_future(stub.MarkProcessed(request, timeout=RPC_TIMEOUT))
                marks.add(task)
                task.add_done_callback(marks.discard)
            if len(received) >= count:
                break
        call.cancel()
        await asyncio.gather(*marks)
    return received


@dataclass
class Latencies:
    """One latency run's delivery latencies, in ms, by measure (see the module docstring)."""

    created: int
    from_create_returned: list[float]
    from_store_receive_time: list[float]


async def latency(ctx: Context, url: str, *, read_from: str, count: int, rate: float) -> Latencies:
    """Creates through A while a reader streams from `read_from` ("a" or "b")."""
    a, b = store(ctx, "store-a", url), store(ctx, "store-b", url)
    async with running(a, b):
        ready = asyncio.Event()
        reader = asyncio.create_task(read((a if read_from == "a" else b).address, count, ready))
        await asyncio.wait_for(ready.wait(), RPC_TIMEOUT)
        produced, returned = await produce(
            ctx, address=a.address, count=count, rate=rate, id_prefix=f"lat{read_from}",
            folder=ctx.fresh(f"produce-{read_from}"),
        )  # fmt: skip
        received = await asyncio.wait_for(reader, 60 + count / rate)
    return Latencies(
        created=produced.calls,
        from_create_returned=[
            (received[m].at_ns - ns) / 1e6 for m, ns in returned.items() if m in received
        ],
        from_store_receive_time=[(r.at_ns - r.receive_time_ns) / 1e6 for r in received.values()],
    )


async def latencies(ctx: Context, server_url: str, args: argparse.Namespace) -> Any:
    """Same store and across stores, alternating for `args.rounds` rounds, so a neighbour's
    burst on the shared machine hits both alike; percentiles over all rounds, and per round."""
    runs: dict[str, list[Latencies]] = {"same store": [], "across stores": []}
    for round_number in range(args.rounds):
        for read_from, name in (("a", "same store"), ("b", "across stores")):
            print(f"[cross_store] latency, {name}, round {round_number + 1}", file=sys.stderr)
            async with fresh_database(server_url, "ackbot_bench") as url:
                runs[name].append(
                    await latency(
                        ctx, url, read_from=read_from, count=args.messages, rate=args.rate
                    )
                )
    figures: dict[str, Any] = {}
    for name, results in runs.items():
        figures[name] = {
            "rate_per_second": args.rate,
            "created": sum(r.created for r in results),
            "delivered": sum(len(r.from_store_receive_time) for r in results),
        }
        for measure in ("from_create_returned", "from_store_receive_time"):
            pooled = [ms for r in results for ms in getattr(r, measure)]
            figures[name][measure] = percentiles(pooled)
            figures[name][f"{measure}_per_round"] = [
                percentiles(getattr(r, measure)) for r in results
            ]
    return figures


# -- 2. the cost of NOTIFY ----------------------------------------------------------------------


async def create_rate(
    ctx: Context, url: str, *, stores: int, concurrency: int, quiet: bool
) -> float:
    """CreateMessage calls/s through `stores` stores at once, `concurrency` in flight on each."""
    services = [store(ctx, f"create-{n}", url, quiet=quiet) for n in range(stores)]
    async with running(*services):
        results = await asyncio.gather(
            *(
                unary_load(ctx, service, STORE_CREATE_METHOD, concurrency, f"c{n}")
                for n, service in enumerate(services)
            )
        )
    for figures in results:
        if figures["errors"]:
            raise RuntimeError(f"{figures['errors']} creates failed: {figures['first_error']}")
    return float(sum(figures["calls_per_second"] for figures in results))


async def notify_cost(ctx: Context, server_url: str, repeats: int) -> Any:
    cases = {"1 store, c1": (1, 1), "1 store, c64": (1, 64), "2 stores, c32 each": (2, 32)}
    figures: dict[str, Any] = {}
    for case, (stores, concurrency) in cases.items():
        runs: dict[str, list[float]] = {"notify": [], "quiet": []}
        for _ in range(repeats):
            # Alternating, so a neighbour's burst on the shared machine hits both alike.
            for variant in ("notify", "quiet"):
                async with fresh_database(server_url, "ackbot_bench") as url:
                    runs[variant].append(
                        await create_rate(
                            ctx, url, stores=stores, concurrency=concurrency,
                            quiet=variant == "quiet",
                        )
                    )  # fmt: skip
        with_notify, without = statistics.median(runs["notify"]), statistics.median(runs["quiet"])
        figures[case] = {
            "creates_per_second_with_notify": with_notify,
            "creates_per_second_without": without,
            "change_percent": 100 * (with_notify / without - 1),
            "runs": runs,
        }
    return figures


# -- report -------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    lines = ["delivery latency, ms (p50 / p95 / p99 / max)"]
    for name, run in results["latency"].items():
        for measure in ("from_create_returned", "from_store_receive_time"):
            p = run[measure]
            rounds = " ".join(
                f"{r['p50_ms']:.1f}/{r['p99_ms']:.1f}" for r in run[f"{measure}_per_round"]
            )
            lines.append(
                f"  {name:<13} {measure:<24} {p['p50_ms']:7.2f} {p['p95_ms']:7.2f} "
                f"{p['p99_ms']:7.2f} {p['max_ms']:7.2f}   ({run['delivered']}/{run['created']}; "
                f"p50/p99 by round: {rounds})"
            )
    lines.append("CreateMessage calls/s, median (with NOTIFY / without / change)")
    for case, figures in results["notify_cost"].items():
        lines.append(
            f"  {case:<20} {figures['creates_per_second_with_notify']:8.0f} "
            f"{figures['creates_per_second_without']:8.0f} {figures['change_percent']:+6.1f}%"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ctx = Context(
        settings=Settings(warmup_seconds=1.0, measure_seconds=args.measure_seconds),
        workdir=workdir,
    )
    results: dict[str, Any] = {"latency": {}, "notify_cost": {}}
    if args.only in (None, "latency"):
        results["latency"] = await latencies(ctx, args.db, args)
    if args.only in (None, "cost"):
        print("[cross_store] the cost of NOTIFY ...", file=sys.stderr, flush=True)
        results["notify_cost"] = await notify_cost(ctx, args.db, args.repeats)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    log_as_deployed()
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="ackbot-cross-store-") as workdir:
        results = asyncio.run(run(args, Path(workdir)))
    text = render(results)
    print(text)
    document = {
        "started": started,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("db", "out")},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
