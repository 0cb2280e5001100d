"""Fills a store's SQLite database directly, for the lookup and memory workloads.

A million CreateMessage calls would take longer than the whole benchmark, so rows go in with
sqlite3's executemany into the schema that the store itself created (start it once on the empty
file first): the table is read back, not assumed, so a new column with a default costs nothing
here. Secondary indexes are dropped during the load and built again after it, which is several
times faster than keeping them up to date row by row.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE = "messages"
# Every column the rows below set; any other column must have a default.
_COLUMNS = (
    "id",
    "author",
    "text",
    "create_time_ns",
    "receive_time_ns",
    "state",
    "reply_to",
    "delivery_attempts",
    "last_error",
    "visible_at_ns",
    "lease_token",
    "process_time_ns",
)
TEXT = "a message stored by the benchmark's bulk fill, number {n}"
REPLY_TEXT = "Thanks, filler. ackbot got your message: number {n}"


@dataclass(frozen=True)
class Filled:
    rows: int
    # PENDING originals, oldest first: the backlog a stream hands out, and MarkProcessed targets.
    pending_ids: list[str]
    # A sample of every stored id (originals and replies), for GetMessage.
    sample_ids: list[str]
    seconds: float


def original_id(n: int) -> str:
    return f"fill-{n:08d}"


def _rows(total: int, pending: int, now_ns: int) -> Iterator[tuple[Any, ...]]:
    """`total` rows: answered pairs (a PROCESSED original and its reply) first, then `pending`
    PENDING originals, the newest, as a backlog would be."""
    pairs = (total - pending) // 2
    for n in range(pairs):
        stamp = now_ns - (total - 2 * n) * 1_000
        message_id = original_id(n)
        yield (message_id, "filler", TEXT.format(n=n), stamp, stamp, "PROCESSED", None, 0, None,
               0, None, stamp)  # fmt: skip
        yield (f"{message_id}-r", "ackbot", REPLY_TEXT.format(n=n), None, stamp, "PROCESSED",
               message_id, 0, None, 0, None, stamp)  # fmt: skip
    for n in range(pairs, pairs + total - 2 * pairs):
        stamp = now_ns - (total - pairs - n) * 1_000
        yield (original_id(n), "filler", TEXT.format(n=n), stamp, stamp, "PENDING", None, 0,
               None, 0, None, None)  # fmt: skip


def _check_columns(connection: sqlite3.Connection) -> None:
    columns = connection.execute(f"PRAGMA table_info({TABLE})").fetchall()
    if not columns:
        raise RuntimeError(f"no table {TABLE!r}: start the store once on the file to create it")
    # table_info rows: (cid, name, type, notnull, default, pk)
    unknown = [
        name
        for _cid, name, _type, notnull, default, pk in columns
        if name not in _COLUMNS and notnull and default is None and not pk
    ]
    if unknown:
        raise RuntimeError(f"the store's table has new required columns {unknown}: teach fill.py")


def fill(db_path: Path, total: int, pending: int, sample: int) -> Filled:
    """Adds `total` rows (`pending` of them PENDING) to the store's database at `db_path`,
    which no process may have open."""
    started = time.monotonic()
    pending = min(pending, total)
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        _check_columns(connection)
        # Nothing is acknowledged to anybody during a fill, so it needs neither fsync nor a
        # journal; a large page cache keeps the index builds in memory. WAL comes back after.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-400000")
        connection.execute("PRAGMA temp_store=MEMORY")
        indexes = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            (TABLE,),
        ).fetchall()
        connection.execute("BEGIN")
        for name, _sql in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        placeholders = ", ".join("?" for _ in _COLUMNS)
        connection.executemany(
            f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            _rows(total, pending, time.time_ns()),
        )
        for _name, sql in indexes:
            connection.execute(sql)
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    pairs = (total - pending) // 2
    pending_ids = [original_id(n) for n in range(pairs, pairs + total - 2 * pairs)]
    step = max(1, 2 * pairs // max(1, sample))
    sample_ids = [original_id(n) + suffix for n in range(0, pairs, step) for suffix in ("", "-r")]
    return Filled(total, pending_ids, sample_ids[:sample], time.monotonic() - started)
