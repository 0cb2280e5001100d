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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ackbot.store.__main__ import main as store_main


def launcher(out: Path) -> list[str]:
    """The command that replaces `python -m ackbot.store` (store_service's `launcher`)."""
    return [sys.executable, "-m", "bench.profiled_store", str(out)]


def _profile_driver_threads() -> cProfile.Profile:
    """A second profile, of the work the store hands to its SQLite threads (every transaction
    and read, each run whole on one of them): the loop's profile leaves it out. One profiler
    object for those threads, taken in turns under a lock (cProfile is not thread-safe)."""
    from ackbot.store import database

    profiler = cProfile.Profile(time.thread_time)
    lock = threading.Lock()
    on_thread = database.on_thread

    async def profiled_on_thread(executor: Any, work: Callable[[], Any]) -> Any:
        def run() -> Any:
            with lock:
                return profiler.runcall(work)

        return await on_thread(executor, run)

    database.on_thread = profiled_on_thread
    return profiler


def main() -> int:
    out, store_argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile(time.thread_time)
    threads = _profile_driver_threads()
    try:
        code: int = profiler.runcall(store_main, store_argv)
    finally:
        profiler.dump_stats(out)
        threads.dump_stats(out + ".threads")
    return code


if __name__ == "__main__":
    sys.exit(main())
