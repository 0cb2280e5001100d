"""An SQLite file as the store uses it: WAL and real write transactions, what the file system can
say about a file SQLite cannot open, and the threads the store's transactions run on (one writer,
SQLITE_READERS readers; see Database.run_in_transaction)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine

T = TypeVar("T")

# Threads that run reads on an SQLite file beside the writer's (WAL: readers never wait for it).
SQLITE_READERS = 2


def sqlite_path(database: str | None) -> Path | None:
    """The file an SQLite database name opens; None when in memory or a URI filename."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def sqlite_file_problem(path: Path) -> str | None:
    """Why SQLite could not open or create `path`, where the file system can tell (SQLite
    itself says only "unable to open database file"); None when nothing is in the way."""
    if path.is_dir():
        return f"{path} is a directory"
    folder = path.parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to create a file in {folder}"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"no permission to read and write {path}"
    return None


def configure_sqlite(engine: Engine, lock_timeout_seconds: float, synchronous: str) -> None:
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: object, _record: object) -> None:
        # The driver opens a write transaction itself, as BEGIN IMMEDIATE, right before the
        # first INSERT, UPDATE or DELETE; every write transaction of the store starts with one,
        # so it takes the write lock before it reads anything, and `busy_timeout` bounds the
        # wait. A read outside a write is one SELECT, consistent on its own, and needs no BEGIN.
        # Saved: a BEGIN round trip per transaction, which is most of a read's cost.
        dbapi_connection.isolation_level = "IMMEDIATE"  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        # WAL: readers never block the writer. synchronous=FULL (the default): every commit is
        # fsynced before CreateMessage or MarkProcessed returns, so acknowledged writes survive
        # a kill -9 and a power cut alike; NORMAL survives a kill -9 only.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout_seconds * 1000)}")
        cursor.close()


async def on_thread(executor: Executor, work: Callable[[], T]) -> T:
    """`work()` on `executor`'s thread. A caller cancelled meanwhile still waits for it to end
    before the cancellation goes on: the thread cannot be stopped, and its connection must not
    be used by the next transaction while it is still in this one."""
    future = asyncio.get_running_loop().run_in_executor(executor, work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise
