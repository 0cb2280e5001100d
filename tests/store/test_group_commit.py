"""Group commit: concurrent writes share transactions, and each caller still gets its own answer.

The repository tests run on the real databases; the GroupCommitter tests at the bottom drive it
with a transaction that only records what ran, to pin down its queueing rules exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from ackbot.store.errors import AlreadyExists, NotFound, StorageUnavailable, StoreError
from ackbot.store.group_commit import GroupCommitter
from ackbot.store.models import State
from ackbot.store.types import NewMessage

from .conftest import count_events


async def test_concurrent_creates_share_transactions_and_all_commit(repo):
    began = count_events(repo, "begin")

    results = await asyncio.gather(
        *(repo.create_message(NewMessage(author="a", text=f"t{i}", id=f"m{i}")) for i in range(200))
    )

    assert [r.message.id for r in results] == [f"m{i}" for i in range(200)]
    assert not any(r.already_existed for r in results)
    assert len({r.message.sequence for r in results}) == 200
    # Far fewer transactions than writes: that is the whole point.
    assert began[0] <= 20, began[0]
    stored = await repo.list_messages(limit=1000)
    assert [m.id for m in stored] == [f"m{i}" for i in range(200)]


async def test_a_failing_write_does_not_fail_the_others_in_its_transaction(repo):
    await repo.create_message(NewMessage(author="a", text="original", id="taken"))

    results = await asyncio.gather(
        repo.create_message(NewMessage(author="a", text="fresh", id="new1")),
        repo.create_message(NewMessage(author="eve", text="other", id="taken")),
        repo.mark_processed("nobody", NewMessage(author="bot", text="r")),
        repo.mark_processed("new1", NewMessage(author="bot", text="reply")),
        repo.create_message(NewMessage(author="a", text="fresh too", id="new2")),
        return_exceptions=True,
    )

    assert not results[0].already_existed
    assert isinstance(results[1], AlreadyExists)
    assert isinstance(results[2], NotFound)
    assert results[3].message.state is State.PROCESSED
    assert results[3].reply.text == "reply"
    assert not results[4].already_existed
    assert (await repo.get_message("taken")).text == "original"
    assert (await repo.get_message("new1")).reply_id == results[3].reply.id


async def test_duplicates_inside_one_transaction_are_answered_like_retries(repo):
    await repo.create_message(NewMessage(author="a", text="question", id="q"))

    creates, marks = await asyncio.gather(
        asyncio.gather(
            *(repo.create_message(NewMessage(author="a", text="same", id="dup")) for _ in range(5))
        ),
        asyncio.gather(
            *(repo.mark_processed("q", NewMessage(author="bot", text=f"a{i}")) for i in range(5))
        ),
    )

    assert [c.already_existed for c in creates].count(False) == 1
    assert len({c.message.sequence for c in creates}) == 1
    assert [m.already_processed for m in marks].count(False) == 1
    assert len({m.reply.id for m in marks}) == 1
    assert len(await repo.list_messages(reply_to="q")) == 1


# -- GroupCommitter on its own ------------------------------------------------------------------


class RecordingDatabase:
    """Stands in for a database: a transaction is a list of the items written in it."""

    def __init__(self) -> None:
        self.committed: list[list[str]] = []
        self.fail_next_with: BaseException | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, body: Callable[[list[str]], list[Any]]) -> list[Any]:
        await self.gate.wait()
        written: list[str] = []
        outcomes = body(written)
        if self.fail_next_with is not None:
            error, self.fail_next_with = self.fail_next_with, None
            raise error
        self.committed.append(written)
        return outcomes


def write(tx: list[str], items: list[str]) -> list[str | StoreError]:
    outcomes: list[str | StoreError] = []
    for item in items:
        if item.startswith("bad"):
            outcomes.append(NotFound(item))
        else:
            tx.append(item)
            outcomes.append(item.upper())
    return outcomes


class Conflict(Exception):
    pass


async def test_requests_queued_behind_a_running_transaction_commit_together():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=100)
    database.gate.clear()
    first = asyncio.create_task(committer.submit(write, "a"))
    await asyncio.sleep(0)  # the writer takes "a" and waits at the gate
    rest = [asyncio.create_task(committer.submit(write, x)) for x in ("b", "c", "bad-d")]
    database.gate.set()

    assert await first == "A"
    assert await rest[0] == "B"
    assert await rest[1] == "C"
    with pytest.raises(NotFound):
        await rest[2]
    assert database.committed == [["a"], ["b", "c"]]


async def test_max_batch_bounds_a_transaction():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=2)

    await asyncio.gather(*(committer.submit(write, str(i)) for i in range(5)))

    assert database.committed == [["0", "1"], ["2", "3"], ["4"]]


async def test_max_rows_leaves_large_writes_for_the_next_transaction_but_not_settlements():
    """A settlement (small, runs first) is not held behind a transaction of creates; a claim
    (runs last) stays behind the creates queued before it, so that it sees them."""
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=100, max_rows=4)
    database.gate.clear()
    first = asyncio.create_task(committer.submit(write, "x"))
    await asyncio.sleep(0)  # the writer takes "x" and waits at the gate
    later = [
        asyncio.create_task(committer.submit(write, "c1", runs_first=True, rows=3)),
        asyncio.create_task(committer.submit(write, "c2", runs_first=True, rows=3)),
        asyncio.create_task(committer.submit(write, "claim", runs_last=True)),
        asyncio.create_task(committer.submit(write, "mark", runs_first=True)),
        asyncio.create_task(committer.submit(write, "c3", runs_first=True, rows=1)),
    ]
    database.gate.set()

    await asyncio.gather(first, *later)
    # c2 did not fit beside c1: the claim waits with it, the mark and the lone create do not.
    assert database.committed == [["x"], ["c1", "mark", "c3"], ["c2", "claim"]]


async def test_a_conflict_reruns_the_batch_one_request_per_transaction():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=10, conflict_errors=(Conflict,))
    database.fail_next_with = Conflict()

    results = await asyncio.gather(*(committer.submit(write, x) for x in ("a", "b", "c")))

    assert results == ["A", "B", "C"]
    assert database.committed == [["a"], ["b"], ["c"]]


async def test_a_failed_transaction_fails_every_caller_in_it():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=10)
    database.fail_next_with = StorageUnavailable("locked")

    results = await asyncio.gather(
        *(committer.submit(write, x) for x in ("a", "b")), return_exceptions=True
    )

    assert all(isinstance(r, StorageUnavailable) for r in results)
    assert database.committed == []
    assert await committer.submit(write, "c") == "C"


async def test_a_cancelled_caller_is_skipped_if_its_write_has_not_started():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=10)
    database.gate.clear()
    running = asyncio.create_task(committer.submit(write, "a"))
    await asyncio.sleep(0)
    abandoned = asyncio.create_task(committer.submit(write, "gone"))
    kept = asyncio.create_task(committer.submit(write, "b"))
    await asyncio.sleep(0)
    abandoned.cancel()
    database.gate.set()

    assert await running == "A"
    assert await kept == "B"
    assert database.committed == [["a"], ["b"]]


async def test_close_waits_for_queued_writes_then_refuses_new_ones():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=10)
    database.gate.clear()
    pending = [asyncio.create_task(committer.submit(write, x)) for x in ("a", "b")]
    await asyncio.sleep(0)
    closing = asyncio.create_task(committer.close())
    await asyncio.sleep(0)
    database.gate.set()
    await closing

    assert [task.result() for task in pending] == ["A", "B"]
    with pytest.raises(StorageUnavailable):
        await committer.submit(write, "late")


async def test_a_transaction_runs_each_handler_once_in_first_seen_order_and_last_ones_after():
    database = RecordingDatabase()
    calls: list[tuple[str, list[str]]] = []

    def named(name: str):
        def handler(tx: list[str], items: list[str]) -> list[str | StoreError]:
            calls.append((name, items))
            return write(tx, items)

        return handler

    create, mark, claim = named("create"), named("mark"), named("claim")
    committer = GroupCommitter(database.run, max_batch=10)
    database.gate.clear()
    first = asyncio.create_task(committer.submit(create, "warm"))
    await asyncio.sleep(0)
    queued = [
        asyncio.create_task(committer.submit(handler, item, runs_last=handler is claim))
        for handler, item in [
            (claim, "c1"),
            (create, "a"),
            (mark, "m1"),
            (create, "b"),
            (claim, "c2"),
            (mark, "m2"),
        ]
    ]
    database.gate.set()

    await first
    assert [await task for task in queued] == ["C1", "A", "M1", "B", "C2", "M2"]
    assert calls[1:] == [("create", ["a", "b"]), ("mark", ["m1", "m2"]), ("claim", ["c1", "c2"])]
    assert database.committed[1] == ["a", "b", "m1", "m2", "c1", "c2"]


def write_one(tx: list[str], item: str) -> str | StoreError:
    (outcome,) = write(tx, [item])
    return outcome


async def test_submit_one_runs_its_function_per_item_in_the_shared_transaction():
    database = RecordingDatabase()
    calls: list[str] = []

    def per_item(tx: list[str], item: str) -> str | StoreError:
        calls.append(item)
        return write_one(tx, item)

    committer = GroupCommitter(database.run, max_batch=10)
    database.gate.clear()
    first = asyncio.create_task(committer.submit_one(per_item, "warm"))
    await asyncio.sleep(0)  # the writer takes "warm" and waits at the gate
    queued = [asyncio.create_task(committer.submit_one(per_item, x)) for x in ("a", "bad-b", "c")]
    database.gate.set()

    assert await first == "WARM"
    assert await queued[0] == "A"
    with pytest.raises(NotFound):
        await queued[1]
    assert await queued[2] == "C"
    # One call per item, in arrival order; the three shared one transaction.
    assert calls == ["warm", "a", "bad-b", "c"]
    assert database.committed == [["warm"], ["a", "c"]]


async def test_per_item_and_batch_functions_share_a_transaction_and_runs_last_goes_last():
    database = RecordingDatabase()
    calls: list[tuple[str, list[str] | str]] = []

    def batch(tx: list[str], items: list[str]) -> list[str | StoreError]:
        calls.append(("batch", items))
        return write(tx, items)

    def release(tx: list[str], item: str) -> str | StoreError:
        calls.append(("release", item))
        return write_one(tx, item)

    def claim(tx: list[str], item: str) -> str | StoreError:
        calls.append(("claim", item))
        return write_one(tx, item)

    committer = GroupCommitter(database.run, max_batch=10)
    database.gate.clear()
    first = asyncio.create_task(committer.submit(batch, "warm"))
    await asyncio.sleep(0)
    queued = [
        asyncio.create_task(committer.submit_one(claim, "c1", runs_last=True)),
        asyncio.create_task(committer.submit_one(release, "r1")),
        asyncio.create_task(committer.submit(batch, "a")),
        asyncio.create_task(committer.submit_one(release, "r2")),
        asyncio.create_task(committer.submit(batch, "b")),
        asyncio.create_task(committer.submit_one(claim, "c2", runs_last=True)),
    ]
    database.gate.set()

    await first
    assert [await task for task in queued] == ["C1", "R1", "A", "R2", "B", "C2"]
    assert calls[1:] == [
        ("release", "r1"),
        ("release", "r2"),
        ("batch", ["a", "b"]),
        ("claim", "c1"),
        ("claim", "c2"),
    ]
    assert database.committed[1] == ["r1", "r2", "a", "b", "c1", "c2"]


async def test_runs_first_goes_before_everything_else():
    database = RecordingDatabase()
    committer = GroupCommitter(database.run, max_batch=10)
    database.gate.clear()
    first = asyncio.create_task(committer.submit_one(write_one, "warm"))
    await asyncio.sleep(0)
    queued = [
        asyncio.create_task(committer.submit_one(write_one, "c", runs_last=True)),
        asyncio.create_task(committer.submit_one(write_one, "r")),
        asyncio.create_task(committer.submit(write, "i1", runs_first=True)),
        asyncio.create_task(committer.submit(write, "i2", runs_first=True)),
    ]
    database.gate.set()

    await first
    assert [await task for task in queued] == ["C", "R", "I1", "I2"]
    assert database.committed[1] == ["i1", "i2", "r", "c"]
    with pytest.raises(ValueError, match="first or last"):
        await committer.submit(write, "x", runs_first=True, runs_last=True)
