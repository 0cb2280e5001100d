"""What gap-free following costs on PostgreSQL (issue 9): CreateMessage throughput with one and
with two stores on one database.

    python -m bench.follow_cost --postgres URL [--stores 1 2] [--concurrency 1 32]
        [--seconds 5] [--repeat 3] [--code DIR]

Each run gets a fresh database on the server of URL, starts that many stores on it and one load
generator per store (bench.loadgen, closed loop, `--concurrency` calls in flight per store), and
prints the summed calls/s, and the CPU each store process and the PostgreSQL server used
meanwhile (in cores: CPU seconds per wall second; on a 2-core machine the sum cannot pass 2).
`--code DIR` runs the stores from another copy of the `ackbot`
package (DIR holds `ackbot/`), e.g. the code before a change, so both are measured in one
session on the same machine, interleaved run by run: on a shared machine the load of the
moment moves the figures more than anything else does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ackbot.testing import Service, child_env, store_service
from bench.loadgen import Spec, run_loadgen

WARMUP_SECONDS = 1.0


@asynccontextmanager
async def fresh_database(url: str) -> AsyncIterator[str]:
    """A new database on the server of `url`, dropped afterwards; yields its URL."""
    base = make_url(url)
    name = f"ackbot_cost_{secrets.token_hex(4)}"
    # CREATE DATABASE cannot run inside a transaction.
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@dataclass(frozen=True)
class RunFigures:
    creates_per_second: float
    # Cores used during the load (warm-up included): each store process, and the PostgreSQL
    # server's processes together.
    store_cores: list[float]
    postgres_cores: float


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL server process on this machine, by pid."""
    seconds: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):  # ended meanwhile
                seconds[process.pid] = _cpu_seconds(process)
    return seconds


async def one_run(
    url: str, stores: int, concurrency: int, seconds: float, code: Path | None, workdir: Path
) -> RunFigures:
    """Calls/s summed over `stores` stores, each loaded with `concurrency` calls in flight."""
    extra = {}
    if code is not None:
        extra["PYTHONPATH"] = os.pathsep.join([str(code), child_env()["PYTHONPATH"]])
    # A folder per run: a store's log is appended to, and readiness reads it.
    workdir = Path(tempfile.mkdtemp(dir=workdir))
    async with fresh_database(url) as database:
        services: list[Service] = []
        try:
            for number in range(stores):
                service = store_service(
                    workdir,
                    name=f"store{number}",
                    args=["--db", database],
                    env=extra,
                )
                services.append(service)
                await service.astart()
            specs = [
                Spec(
                    mode="unary",
                    address=service.address,
                    concurrency=concurrency,
                    warmup_seconds=WARMUP_SECONDS,
                    measure_seconds=seconds,
                    id_prefix=f"{service.name}-{secrets.token_hex(3)}",
                )
                for service in services
            ]
            store_processes = [
                psutil.Process(service.proc.pid) for service in services if service.proc
            ]
            store_before = [_cpu_seconds(process) for process in store_processes]
            postgres_before = _postgres_cpu()
            started = time.monotonic()
            results = await asyncio.gather(*(run_loadgen(spec, child_env()) for spec in specs))
            wall = time.monotonic() - started
            store_cores = [
                (_cpu_seconds(process) - before) / wall
                for process, before in zip(store_processes, store_before, strict=True)
            ]
            postgres_after = _postgres_cpu()
            postgres_cores = (
                sum(after - postgres_before.get(pid, 0.0) for pid, after in postgres_after.items())
                / wall
            )
        finally:
            for service in services:
                await service.aterminate()
    errors = sum(result.errors for result in results)
    if errors:
        raise RuntimeError(f"{errors} calls failed: {results[0].first_error}")
    return RunFigures(
        sum(result.calls / result.seconds for result in results), store_cores, postgres_cores
    )


async def main(args: argparse.Namespace) -> None:
    variants: list[tuple[str, Path | None]] = [("this code", None)]
    if args.code is not None:
        variants.insert(0, (f"code in {args.code}", args.code))
    figures: dict[tuple[str, int, int], list[RunFigures]] = {}
    with tempfile.TemporaryDirectory(prefix="follow-cost-") as workdir:
        for _ in range(args.repeat):
            for stores in args.stores:
                for concurrency in args.concurrency:
                    for label, code in variants:
                        run = await one_run(
                            args.postgres, stores, concurrency, args.seconds, code, Path(workdir)
                        )
                        figures.setdefault((label, stores, concurrency), []).append(run)
                        cores = " + ".join(f"{c:.2f}" for c in run.store_cores)
                        print(
                            f"{label}: {stores} store(s), {concurrency} in flight each: "
                            f"{run.creates_per_second:,.0f} creates/s; cores: stores {cores}, "
                            f"PostgreSQL {run.postgres_cores:.2f}",
                            flush=True,
                        )
    print("\nmedian of each (creates/s, all stores together):")
    for (label, stores, concurrency), runs in figures.items():
        rates = [run.creates_per_second for run in runs]
        store_cores = statistics.median(sum(run.store_cores) for run in runs)
        postgres_cores = statistics.median(run.postgres_cores for run in runs)
        print(
            f"  {label:>30}  stores={stores}  in_flight_per_store={concurrency:>3}  "
            f"{statistics.median(rates):>8,.0f}  (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
            f"  cores: stores {store_cores:.2f}, PostgreSQL {postgres_cores:.2f}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.follow_cost", description=__doc__)
    parser.add_argument("--postgres", required=True, help="postgresql+asyncpg://... URL")
    parser.add_argument("--stores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--code", type=Path, help="a folder holding another `ackbot` package")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
