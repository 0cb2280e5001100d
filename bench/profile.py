"""Where the store's time goes: the store under cProfile while one client process drives
CreateMessage at concurrency 64 (as in the benchmark), then its top functions.

    python -m bench.profile [--seconds 10] [--concurrency 64] [--top 30]

The clock is the event loop thread's CPU time (see bench.profiled_store): SQLite's own work, on
aiosqlite's thread, and every wait are left out, so the figures say what the loop costs.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.loadgen import STORE_CREATE_METHOD, Spec, run_loadgen
from bench.procs import child_env, store_service
from bench.workloads import running


async def profile_create(workdir: Path, seconds: float, concurrency: int) -> tuple[Path, float]:
    """Returns the profile's path and the calls per second measured under it."""
    profile_path = workdir / "store.prof"
    store = store_service(workdir, workdir / "store.db", profile_to=profile_path)
    async with running(store):
        spec = Spec(
            mode="unary",
            address=store.address,
            method=STORE_CREATE_METHOD,
            concurrency=concurrency,
            warmup_seconds=0.5,
            measure_seconds=seconds,
            id_prefix="profile",
        )
        result = await run_loadgen(spec, child_env())
    # Leaving `running` stopped the store gracefully, and cProfile wrote the file on its exit.
    return profile_path, result.calls / result.seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ackbot-profile-") as folder:
        path, rate = asyncio.run(profile_create(Path(folder), args.seconds, args.concurrency))
        print(
            f"CreateMessage at concurrency {args.concurrency}: {rate:,.0f} calls/s under cProfile"
        )
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
