"""Removing settled messages for good (PurgeMessages, the retention sweeper): tables/removal.py
through the manager, on the real databases and the fake clock."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from ackbot.store.errors import NotFound
from ackbot.store.manager import MessageManager
from ackbot.store.metrics import StoreMetrics
from ackbot.store.models import State
from ackbot.store.repository import ERASE_BATCH, ERASE_BATCH_SINGLE_WRITER, MessageRepository
from ackbot.store.sweeper import RetentionSweeper
from ackbot.store.tables.removal import BATCH_ROWS
from ackbot.store.types import NewMessage

from .conftest import SECOND_NS, FakeClock, MakeRepository

DAY_NS = 86_400 * SECOND_NS


async def _processed(repo: MessageRepository, message_id: str) -> str:
    """A PROCESSED original with a reply; returns the reply's id."""
    await repo.create_message(NewMessage("alice", "hi", id=message_id))
    result = await repo.mark_processed(message_id, NewMessage("bot", "hello"))
    assert result.reply is not None
    return result.reply.id


async def _dead(repo: MessageRepository, message_id: str) -> None:
    await repo.create_message(NewMessage("bob", "hi", id=message_id))
    [delivery] = await repo.claim(1, 60 * SECOND_NS)
    released = await repo.release(
        message_id, delivery.lease_token, reason="broken", retry_after_ns=0
    )
    assert released.state is State.DEAD


async def _exists(repo: MessageRepository, message_id: str) -> bool:
    try:
        await repo.get_message(message_id)
    except NotFound:
        return False
    return True


async def _purge(manager: MessageManager, state: str, older_than_ns: int) -> list[int]:
    return [count async for count in manager.purge(state, older_than_ns)]


async def test_purge_removes_old_processed_originals_with_their_replies_and_nothing_else(
    make_repo: MakeRepository, clock: FakeClock
) -> None:
    repo = await make_repo(max_attempts=1)
    metrics = StoreMetrics(CollectorRegistry())
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at, metrics=metrics)
    old_reply = await _processed(repo, "old")
    await _dead(repo, "old-dead")
    await repo.create_message(NewMessage("carol", "waiting", id="old-pending"))
    clock.advance(2 * 86_400)
    new_reply = await _processed(repo, "new")

    assert await _purge(manager, "PROCESSED", DAY_NS) == [2]  # the original and its reply

    assert not await _exists(repo, "old")
    assert not await _exists(repo, old_reply)
    for kept in ("old-dead", "old-pending", "new", new_reply):
        assert await _exists(repo, kept), kept
    assert metrics.removed.labels("PROCESSED", "purge")._value.get() == 2
    # The id is free again: a create stores a new message.
    created = await repo.create_message(NewMessage("alice", "again", id="old"))
    assert not created.already_existed

    assert await _purge(manager, "DEAD", DAY_NS) == [1]
    assert not await _exists(repo, "old-dead")
    assert await _exists(repo, "old-pending")
    assert await _purge(manager, "DEAD", DAY_NS) == [0]  # a retry finds nothing


async def test_purge_goes_in_batches_until_nothing_older_is_left(
    repo: MessageRepository, clock: FakeClock
) -> None:
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    count = BATCH_ROWS + 10
    await repo.create_messages([NewMessage("a", "t", id=f"m{i}") for i in range(count)])
    for i in range(count):
        await repo.mark_processed(f"m{i}", None)
    clock.advance(10)

    progress = await _purge(manager, "PROCESSED", 0)

    assert progress == [BATCH_ROWS, count]
    assert await repo.list_messages(limit=10) == []


@pytest.mark.parametrize("state", ["PENDING", "LEASED", "HELD"])
async def test_unsettled_states_are_never_removed(repo: MessageRepository, state: str) -> None:
    from ackbot.store.tables.removal import Removal

    with pytest.raises(ValueError, match="not settled"):
        await repo.remove_batch(Removal(state, 2**62, "purge"))


async def test_the_sweeper_removes_each_retained_state_by_its_own_age(
    make_repo: MakeRepository, clock: FakeClock
) -> None:
    repo = await make_repo(max_attempts=1)
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    reply = await _processed(repo, "p")
    await _dead(repo, "d")
    clock.advance(3 * 86_400)
    sweeper = RetentionSweeper(
        manager, {"PROCESSED": 2 * 86_400, "DEAD": 7 * 86_400}, interval_seconds=60
    )

    assert await sweeper.sweep_once() == {"PROCESSED": 2, "DEAD": 0}

    assert not await _exists(repo, "p")
    assert not await _exists(repo, reply)
    assert await _exists(repo, "d")


@pytest.mark.postgres
async def test_two_stores_share_a_purge_without_removing_anything_twice(
    make_postgres_repo: MakeRepository, clock: FakeClock
) -> None:
    """Two stores (each its own repository and engine pool) purge one database at once: their
    batches take disjoint rows (SKIP LOCKED), so together they remove each message once, and
    every original goes with its reply."""
    first = await make_postgres_repo()
    second = await make_postgres_repo()
    originals = 3 * BATCH_ROWS
    await first.create_messages([NewMessage("a", "t", id=f"m{i}") for i in range(originals)])
    for i in range(originals):
        await first.mark_processed(f"m{i}", NewMessage("bot", "r"))
    await first.create_message(NewMessage("a", "unsettled", id="pending"))
    clock.advance(10)
    metrics = [StoreMetrics(CollectorRegistry()) for _ in range(2)]
    managers = [
        MessageManager(r, clock_ns=clock, call_at=clock.call_at, metrics=m)
        for r, m in zip((first, second), metrics, strict=True)
    ]

    results = await asyncio.gather(*(_purge(m, "PROCESSED", 0) for m in managers))

    totals = [progress[-1] for progress in results]
    assert sum(totals) == 2 * originals  # each original and its reply, once
    removed = [m.removed.labels("PROCESSED", "purge")._value.get() for m in metrics]
    assert removed == totals
    assert [m.id for m in await first.list_messages(limit=10)] == ["pending"]


# -- EraseAuthor: tombstones in batches (tables/messages.py's tombstone_where) -------------------


async def test_erase_author_tombstones_every_message_of_the_author_with_replies_in_batches(
    repo: MessageRepository, clock: FakeClock
) -> None:
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    batch = ERASE_BATCH if repo.shared else ERASE_BATCH_SINGLE_WRITER
    count = batch + 20
    await repo.create_messages([NewMessage("eve", "t", id=f"e{i}") for i in range(count)])
    await repo.create_message(NewMessage("frank", "kept", id="f"))
    reply = await repo.mark_processed("e0", NewMessage("bot", "answer to eve"))
    assert reply.reply is not None

    progress = [n async for n in manager.erase_author("eve")]

    assert progress == [batch + 1, count + 1, count + 1]  # the reply went with e0
    assert not await _exists(repo, "e0")
    assert not await _exists(repo, reply.reply.id)
    assert [m.id for m in await repo.list_messages(limit=10)] == ["f"]
    deleted = await repo.list_messages(limit=count + 10, state=State.DELETED)
    assert len(deleted) == count + 1
    assert {m.author for m in deleted} == {""}
    # Called again (a retry after a cut): nothing more to do.
    assert [n async for n in manager.erase_author("eve")] == [0]


async def test_purge_of_tombstones_frees_their_ids(repo: MessageRepository, clock: FakeClock):
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    await _processed(repo, "kept-original")
    await repo.create_message(NewMessage("eve", "t", id="gone"))
    reply = await repo.mark_processed("gone", NewMessage("bot", "r"))
    assert reply.reply is not None
    [kept_reply] = [m for m in await repo.list_messages(limit=10) if m.reply_to == "kept-original"]
    await repo.delete(kept_reply.id)  # a reply deleted alone: a tombstone of its own
    assert [n async for n in manager.erase_author("eve")] == [2, 2]
    clock.advance(10)

    assert await _purge(manager, "DELETED", 0) == [3]

    assert [m.id for m in await repo.list_messages(limit=10)] == ["kept-original"]
    created = await repo.create_message(NewMessage("eve", "back", id="gone"))
    assert not created.already_existed
