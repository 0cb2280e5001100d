"""Where the store's time goes: the store under cProfile during a benchmark load, then its top
functions.

    python -m bench.profile [--workload create|e2e] [--seconds 10] [--messages 3000]
                            [--rate 0] [--top 30]

`create`: one client process drives CreateMessage at concurrency 64 (as in the benchmark).
`e2e`: 64 producers create `--messages` messages while a bot with the built-in responder answers
them, as in the end-to-end workload; with `--rate N`, one producer creates them at N a second
(the fixed-rate run behind "store CPU per answered message").

The clock is the event loop thread's CPU time (see bench.profiled_store): SQLite's own work, on
aiosqlite's thread, and every wait are left out, so the figures say what the loop costs.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from ackbot.testing import bot_service, child_env, store_service
from bench import profiled_store
from bench.loadgen import STORE_CREATE_METHOD, Spec, run_loadgen
from bench.settings import FULL, log_as_deployed
from bench.workloads import Context, produce, running, settle_deadline, store_stub, wait_settled


async def profile_create(workdir: Path, seconds: float) -> tuple[Path, str]:
    """Returns the profile's path and what the load achieved under it."""
    profile_path = workdir / "store.prof"
    store = store_service(
        workdir, db_path=workdir / "store.db", launcher=profiled_store.launcher(profile_path)
    )
    async with running(store):
        spec = Spec(
            mode="unary",
            address=store.address,
            method=STORE_CREATE_METHOD,
            concurrency=64,
            warmup_seconds=0.5,
            measure_seconds=seconds,
            id_prefix="profile",
        )
        result = await run_loadgen(spec, child_env())
    # Leaving `running` stopped the store gracefully, and it wrote the profile on its way out.
    return profile_path, f"CreateMessage, concurrency 64: {result.calls / result.seconds:,.0f}/s"


async def profile_end_to_end(workdir: Path, messages: int, rate: float) -> tuple[Path, str]:
    profile_path = workdir / "store.prof"
    store = store_service(
        workdir, db_path=workdir / "store.db", launcher=profiled_store.launcher(profile_path)
    )
    async with running(store):
        bot = bot_service(
            workdir, store.address, persona="ackbot", max_in_flight=FULL.bot_max_in_flight
        )
        async with running(bot), grpc.aio.insecure_channel(store.address) as channel:
            produced, _ = await produce(
                Context(FULL, workdir), address=store.address, count=messages, rate=rate,
                concurrency=1 if rate else FULL.e2e_producers, id_prefix="profile",
                folder=workdir,
            )  # fmt: skip
            await wait_settled(store_stub(channel), settle_deadline(messages))
    return profile_path, f"end to end: {messages} messages created in {produced.seconds:.1f} s"


def main(argv: Sequence[str] | None = None) -> None:
    log_as_deployed()
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--workload", choices=("create", "e2e"), default="create")
    parser.add_argument("--seconds", type=float, default=10.0, help="create: measured window")
    parser.add_argument("--messages", type=int, default=3000, help="e2e: messages answered")
    parser.add_argument("--rate", type=float, default=0.0, help="e2e: creates a second (0: full)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", type=Path, help="keep the raw profile here (for pstats)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ackbot-profile-") as folder:
        if args.workload == "create":
            run = profile_create(Path(folder), args.seconds)
        else:
            run = profile_end_to_end(Path(folder), args.messages, args.rate)
        path, achieved = asyncio.run(run)
        print(f"{achieved} (under cProfile)")
        if args.save is not None:
            shutil.copyfile(path, args.save)
            shutil.copyfile(f"{path}.threads", f"{args.save}.threads")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
