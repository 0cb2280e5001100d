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
import os
import secrets
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ackbot.testing import Service, child_env, store_service
from bench.cpu import postgres_window, process_window
from bench.loadgen import Spec, run_loadgen
from bench.settings import log_as_deployed
from chaos.postgres import fresh_database

WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class RunFigures:
    creates_per_second: float
    # Cores used during the load (warm-up included): each store process, and the PostgreSQL
    # server's processes together.
    store_cores: list[float]
    postgres_cores: float


async def one_run(
    url: str, stores: int, concurrency: int, seconds: float, code: Path | None, workdir: Path
) -> RunFigures:
    """Calls/s summed over `stores` stores, each loaded with `concurrency` calls in flight."""
    extra = {}
    if code is not None:
        extra["PYTHONPATH"] = os.pathsep.join([str(code), child_env()["PYTHONPATH"]])
    # A folder per run: a store's log is appended to, and readiness reads it.
    workdir = Path(tempfile.mkdtemp(dir=workdir))
    async with fresh_database(url, "ackbot_cost") as database:
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
            windows = [process_window(service.proc.pid) for service in services if service.proc]
            windows.append(postgres_window())
            for window in windows:
                window.open()
            results = await asyncio.gather(*(run_loadgen(spec, child_env()) for spec in specs))
            for window in windows:
                window.close()
            *store_cores, postgres_cores = [window.percent / 100 for window in windows]
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
    log_as_deployed()
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
