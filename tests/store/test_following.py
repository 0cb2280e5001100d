"""Following by `after_sequence` never skips a message, with several stores on one PostgreSQL.

PostgreSQL draws a row's sequence when it is inserted, not when it commits. Store A inserts
(sequence 1) and has not committed yet; store B inserts (sequence 2) and commits; a follower
that reads `sequence > cursor` now sees 2 and moves its cursor past 1, which then commits
unseen. Each test here holds A's transaction open right after its INSERT, deterministically
(a gate, no sleeps), and checks what a follower sees. SQLite has one writer, so there a
transaction that inserts later also commits later: nothing to show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ackbot.store.repository import MessageRepository, NewMessage, StoredMessage
from ackbot.testing import wait_until

from .conftest import MakeRepository

pytestmark = pytest.mark.postgres

WITHIN = 10.0


class HeldOpen:
    """Holds the next write transaction of `repository` that inserts into messages open, right
    after its INSERT, until `let_commit()`: a store caught between drawing sequences and
    committing them."""

    def __init__(self, repository: MessageRepository) -> None:
        self.inserted = asyncio.Event()
        self._commit = asyncio.Event()
        insert = repository._insert_new

        async def insert_then_wait(tx: Any, rows: list[dict[str, Any]]) -> dict[str, int]:
            sequences = await insert(tx, rows)
            if rows and not self.inserted.is_set():
                self.inserted.set()
                await self._commit.wait()
            return sequences

        repository._insert_new = insert_then_wait  # type: ignore[method-assign]

    def let_commit(self) -> None:
        self._commit.set()


class Follower:
    """What `ackbot tail` does: list after the last sequence seen, remember the last one."""

    def __init__(self, repository: MessageRepository, cursor: int = 0) -> None:
        self._repository = repository
        self.cursor = cursor
        self.seen: list[StoredMessage] = []

    async def poll(self) -> list[StoredMessage]:
        page = await self._repository.list_messages(after_sequence=self.cursor, limit=1000)
        if page:
            self.cursor = page[-1].sequence
        self.seen += page
        return page


async def waiting_for_the_sequence_lock(engine: AsyncEngine) -> bool:
    """Whether a session of this database waits for ackbot's advisory lock right now."""
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                " AND query LIKE '%pg_advisory_xact_lock%'"
            )
        )
    return bool(waiting)


async def as_far_as_it_goes(task: asyncio.Task[Any], engine: AsyncEngine) -> None:
    """Until `task` has finished, or waits behind another store's open transaction."""

    async def settled() -> bool:
        return task.done() or await waiting_for_the_sequence_lock(engine)

    await wait_until(settled, within=WITHIN, interval=0.01, what="store B committed or waits")


def reply(text_: str) -> NewMessage:
    return NewMessage(author="bot", text=text_)


# Store A's write that draws a sequence: a create, or the reply MarkProcessed inserts.
AWrite = Callable[[MessageRepository], Awaitable[Any]]
A_WRITES: dict[str, AWrite] = {
    "create": lambda a: a.create_message(NewMessage(author="ana", text="a", id="a")),
    "reply": lambda a: a.mark_processed("original", reply("a reply")),
}


@pytest.mark.xfail(strict=True, reason="issue 9: PostgreSQL inserts do not take turns yet")
@pytest.mark.parametrize("a_write", list(A_WRITES))
async def test_a_follower_sees_a_message_that_commits_after_a_higher_one(
    make_postgres_repo: MakeRepository, postgres_engine: AsyncEngine, a_write: str
) -> None:
    store_a, store_b, reader = [await make_postgres_repo() for _ in range(3)]
    original = await store_b.create_message(NewMessage(author="ana", text="q", id="original"))
    follower = Follower(reader, cursor=original.message.sequence)
    held = HeldOpen(store_a)

    a_task = asyncio.create_task(A_WRITES[a_write](store_a))
    async with asyncio.timeout(WITHIN):
        await held.inserted.wait()
    b_task = asyncio.create_task(store_b.create_message(NewMessage(author="bob", text="b", id="b")))
    try:
        await as_far_as_it_goes(b_task, postgres_engine)
        await follower.poll()
    finally:
        held.let_commit()
    async with asyncio.timeout(WITHIN):
        await asyncio.gather(a_task, b_task)
    await follower.poll()

    a_id = "a" if a_write == "create" else (await reader.get_message("original")).reply_id
    seen = [message.id for message in follower.seen]
    assert sorted(seen) == sorted([a_id, "b"]), f"the follower skipped a message: saw {seen}"
    sequences = [message.sequence for message in follower.seen]
    assert sequences == sorted(sequences)
