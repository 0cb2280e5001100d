"""Checks run straight on a store's SQLite file, read-only, beside the RPCs: the cross-row facts
that the API can only show one message at a time."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def read_only(db_path: Path) -> sqlite3.Connection:
    # mode=ro: a check must never be the thing that repairs or changes the file it checks.
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)


def cross_row_problems(db_path: Path) -> list[str]:
    """Breaks of the one-transaction rule and of the file's integrity, as readable lines."""
    problems: list[str] = []
    with contextlib.closing(read_only(db_path)) as connection:
        (integrity,) = connection.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        orphans = connection.execute(
            "SELECT r.id, r.reply_to, o.state FROM messages r"
            " LEFT JOIN messages o ON o.id = r.reply_to"
            " WHERE r.reply_to IS NOT NULL AND (o.id IS NULL OR o.state != 'PROCESSED')"
        ).fetchall()
        problems += [f"reply {r} answers {o!r} which is {s}" for r, o, s in orphans]
        replies_of_replies = connection.execute(
            "SELECT r.id FROM messages r JOIN messages o ON o.id = r.reply_to"
            " WHERE o.reply_to IS NOT NULL"
        ).fetchall()
        problems += [f"reply {r} answers a reply" for (r,) in replies_of_replies]
        unborn = connection.execute(
            "SELECT id, state FROM messages WHERE reply_to IS NOT NULL AND state != 'PROCESSED'"
        ).fetchall()
        problems += [f"reply {r} is {s}" for r, s in unborn]
    return problems


def processed_without_reply(db_path: Path) -> list[str]:
    """Originals PROCESSED with no reply: a fault only where every MarkProcessed sent one."""
    with contextlib.closing(read_only(db_path)) as connection:
        rows = connection.execute(
            "SELECT o.id FROM messages o LEFT JOIN messages r ON r.reply_to = o.id"
            " WHERE o.reply_to IS NULL AND o.state = 'PROCESSED' AND r.id IS NULL"
        ).fetchall()
    return [message_id for (message_id,) in rows]
