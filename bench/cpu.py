"""CPU time of benchmark processes, read from the kernel (psutil over /proc): a process's user +
system seconds over a window, and the PostgreSQL server's, which is many processes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import psutil


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL server process on this machine, by pid, with the
    CPU of the children each has reaped: a backend that ended (a client closed its connection)
    has moved its seconds into the postmaster's."""
    seconds: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):  # ended meanwhile
                times = process.cpu_times()
                seconds[process.pid] = float(
                    times.user + times.system + times.children_user + times.children_system
                )
    return seconds


class CpuWindow:
    """CPU seconds between `open()` and `close()`, of what `read` counts (a running total)."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self._opened = self._opened_at = 0.0
        self.cpu_seconds = self.wall_seconds = 0.0

    def open(self) -> None:
        self._opened, self._opened_at = self._read(), time.monotonic()

    def close(self) -> None:
        self.cpu_seconds = self._read() - self._opened
        self.wall_seconds = time.monotonic() - self._opened_at

    @property
    def percent(self) -> float:
        """Of one core: 100 is a process that never waited."""
        return 100 * self.cpu_seconds / self.wall_seconds


def process_window(pid: int) -> CpuWindow:
    process = psutil.Process(pid)
    return CpuWindow(lambda: cpu_seconds(process))


def main_thread_window(pid: int) -> CpuWindow:
    """The CPU of the process's main thread alone (the store's event loop; its other threads
    are the SQLite writer and readers and gRPC's own)."""
    process = psutil.Process(pid)

    def read() -> float:
        for thread in process.threads():
            if thread.id == pid:
                return float(thread.user_time + thread.system_time)
        return 0.0

    return CpuWindow(read)


def postgres_window() -> CpuWindow:
    """The PostgreSQL server's processes together, backends started or ended meanwhile
    included. Every server process on the machine counts: on a shared machine, other clients'
    work too."""
    return CpuWindow(lambda: sum(postgres_cpu().values()))
