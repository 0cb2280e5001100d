"""The store under cProfile, timed by the event loop thread's CPU clock.

    python -m bench.profiled_store OUT.prof [ackbot-store flags...]

Why not `python -m cProfile`: its default clock is wall time, so every await (for aiosqlite's
thread, for the fsync, for a CPU that another process holds) lands on whatever function was
running, and on a shared machine the profile mostly measures the neighbours. Thread CPU time
counts what the loop's own thread spent.
"""

from __future__ import annotations

import cProfile
import sys
import time
from pathlib import Path

from ackbot.store.__main__ import main as store_main


def launcher(out: Path) -> list[str]:
    """The command that replaces `python -m ackbot.store` (store_service's `launcher`)."""
    return [sys.executable, "-m", "bench.profiled_store", str(out)]


def main() -> int:
    out, store_argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile(time.thread_time)
    try:
        code: int = profiler.runcall(store_main, store_argv)
    finally:
        profiler.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
