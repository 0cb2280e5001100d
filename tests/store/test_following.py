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

from ackbot.store.database import Database
from ackbot.store.errors import StorageUnavailable
from ackbot.store.repository import MessageRepository
from ackbot.store.types import NewMessage, StoredMessage
from ackbot.testing import wait_until

from .conftest import SECOND_NS, FakeClock, Gate, MakeRepository

pytestmark = pytest.mark.postgres

WITHIN = 10.0


class HeldOpen:
    """Holds the next write transaction of `repository` that inserts into messages open, right
    after its INSERT, until `let_commit()`: a store caught between drawing sequences and
    committing them."""

    def __init__(self, repository: MessageRepository) -> None:
        self._gate = Gate()
        self.inserted = self._gate.reached
        insert = repository._messages._insert_new
        held = False

        def insert_then_wait(tx: Any, rows: list[dict[str, Any]]) -> dict[str, int]:
            nonlocal held
            sequences = insert(tx, rows)
            if rows and not held:
                held = True
                self._gate.wait_here()
            return sequences

        repository._messages._insert_new = insert_then_wait  # type: ignore[method-assign]

    def let_commit(self) -> None:
        self._gate.open()


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


async def test_a_store_waits_for_the_insert_turn_of_another(
    make_postgres_repo: MakeRepository, postgres_engine: AsyncEngine
) -> None:
    store_a, store_b = [await make_postgres_repo() for _ in range(2)]
    follower = Follower(store_b)
    held = HeldOpen(store_a)
    a_task = asyncio.create_task(store_a.create_message(NewMessage(author="a", text="a", id="a")))
    async with asyncio.timeout(WITHIN):
        await held.inserted.wait()

    b_task = asyncio.create_task(store_b.create_message(NewMessage(author="b", text="b", id="b")))
    try:
        await wait_until(
            lambda: waiting_for_the_sequence_lock(postgres_engine),
            within=WITHIN,
            interval=0.01,
            what="store B waits for the insert turn",
        )
        assert not b_task.done()
        assert await follower.poll() == []
    finally:
        held.let_commit()
    async with asyncio.timeout(WITHIN):
        a, b = await asyncio.gather(a_task, b_task)

    assert a.message.sequence < b.message.sequence
    assert [m.id for m in await follower.poll()] == ["a", "b"]


async def test_a_wait_for_the_insert_turn_ends_in_unavailable_at_the_lock_timeout(
    make_postgres_repo: MakeRepository, postgres_engine: AsyncEngine, clock: FakeClock
) -> None:
    store_a = await make_postgres_repo()
    impatient = MessageRepository(
        Database(postgres_engine, lock_timeout_seconds=0.2), clock_ns=clock
    )
    held = HeldOpen(store_a)
    a_task = asyncio.create_task(store_a.create_message(NewMessage(author="a", text="a", id="a")))
    try:
        async with asyncio.timeout(WITHIN):
            await held.inserted.wait()
            with pytest.raises(StorageUnavailable, match="lock timeout"):
                await impatient.create_message(NewMessage(author="b", text="b", id="b"))
    finally:
        held.let_commit()
    async with asyncio.timeout(WITHIN):
        await a_task

    # Nothing of the refused write was stored, and the next one goes through.
    assert [m.id for m in await impatient.list_messages()] == ["a"]
    retried = await impatient.create_message(NewMessage(author="b", text="b", id="b"))
    assert not retried.already_existed


async def test_waiting_for_the_turn_holds_no_row_lock_the_holder_needs(
    make_postgres_repo: MakeRepository, postgres_engine: AsyncEngine
) -> None:
    # The deadlock the lock order prevents: store B releases a message and creates one in one
    # transaction while store A, holding the turn, extends that message in its own. If B's
    # release ran first, B would hold the row and wait for the turn, and A would wait for the
    # row: PostgreSQL would abort one of them after deadlock_timeout.
    store_a, store_b = [await make_postgres_repo() for _ in range(2)]
    await store_b.create_message(NewMessage(author="u", text="x", id="x"))
    (delivery,) = await store_b.claim(1, 60 * SECOND_NS)
    token = delivery.lease_token
    held = HeldOpen(store_a)
    a_tasks = [
        asyncio.create_task(store_a.create_message(NewMessage(author="a", text="a", id="a"))),
        asyncio.create_task(store_a.extend_lease("x", token, 120 * SECOND_NS)),
    ]
    async with asyncio.timeout(WITHIN):
        await held.inserted.wait()
    b_tasks = [
        asyncio.create_task(store_b.release("x", token, reason="", retry_after_ns=0)),
        asyncio.create_task(store_b.create_message(NewMessage(author="b", text="b", id="b"))),
    ]
    try:
        await wait_until(
            lambda: waiting_for_the_sequence_lock(postgres_engine),
            within=WITHIN,
            interval=0.01,
            what="store B waits for the insert turn",
        )
    finally:
        held.let_commit()
    async with asyncio.timeout(WITHIN):
        await asyncio.gather(*a_tasks, *b_tasks)

    assert [m.id for m in await store_b.list_messages()] == ["x", "a", "b"]
