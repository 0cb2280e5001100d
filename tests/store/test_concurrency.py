"""Many tasks on one repository at once: nothing lost, nothing delivered twice, one reply each."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from ackbot.store.database import Database, create_engine
from ackbot.store.errors import AlreadyExists
from ackbot.store.migrations import upgrade_to_head
from ackbot.store.models import MessageRow, State
from ackbot.store.repository import MessageRepository
from ackbot.store.types import NewMessage

from .conftest import SECOND_NS

CREATORS = 50
PER_CREATOR = 20
CLAIMERS = 4
TOTAL = CREATORS * PER_CREATOR


@pytest.mark.slow
async def test_concurrent_creators_and_claimers_answer_every_message_once(make_repo):
    # The fake clock stands still, so no lease lapses: every message must go out exactly once.
    repo = await make_repo(max_attempts=5)
    holders: dict[str, int] = {}  # message id -> claimer holding its lease right now
    deliveries: Counter[str] = Counter()
    first_wins: Counter[str] = Counter()
    created: list[str] = []
    processed = 0
    # Set on every create and when all is done; cleared by a claimer *before* it claims, the
    # store's own pattern, so a create that lands mid-claim is never missed.
    more_work = asyncio.Event()

    async def creator(c: int) -> None:
        for i in range(PER_CREATOR):
            result = await repo.create_message(NewMessage(author=f"user{c}", text=f"{c}/{i}"))
            assert not result.already_existed
            created.append(result.message.id)
            more_work.set()

    async def settle(claimer: int, message_id: str, token: str) -> None:
        nonlocal processed
        # Two settlements of the same delivery race; the first commit wins.
        results = await asyncio.gather(
            repo.mark_processed(message_id, NewMessage(author="bot", text=f"re {claimer}"), token),
            repo.mark_processed(message_id, NewMessage(author="bot", text="duplicate"), token),
        )
        assert sorted(r.already_processed for r in results) == [False, True]
        assert results[0].reply.id == results[1].reply.id
        assert results[0].message.state is results[1].message.state is State.PROCESSED
        first_wins[message_id] += 1
        assert holders.pop(message_id) == claimer
        processed += 1
        if processed == TOTAL:
            more_work.set()

    async def claimer(n: int) -> None:
        while processed < TOTAL:
            more_work.clear()
            claimed = await repo.claim(10, 60 * SECOND_NS)
            if not claimed:
                await more_work.wait()
                continue
            for delivery in claimed:
                message_id = delivery.message.id
                assert message_id not in holders, f"{message_id} delivered to two claimers"
                holders[message_id] = n
                deliveries[message_id] += 1
            await asyncio.gather(*(settle(n, d.message.id, d.lease_token) for d in claimed))

    async with asyncio.timeout(60):
        await asyncio.gather(
            *(creator(c) for c in range(CREATORS)), *(claimer(n) for n in range(CLAIMERS))
        )

    assert len(created) == len(set(created)) == TOTAL
    assert set(deliveries) == set(created)
    assert set(deliveries.values()) == {1}
    assert set(first_wins.values()) == {1}
    assert holders == {}
    everything = await repo.list_messages(limit=10 * TOTAL)
    originals = [m for m in everything if m.reply_to is None]
    replies = [m for m in everything if m.reply_to is not None]
    assert {m.id for m in originals} == set(created)
    assert all(m.state is State.PROCESSED for m in everything)
    assert all(m.delivery_attempts == 1 for m in originals)
    assert len(replies) == TOTAL
    assert {m.reply_to for m in replies} == set(created)
    assert {m.reply_id for m in originals} == {m.id for m in replies}
    sequences = [m.sequence for m in everything]
    assert len(set(sequences)) == len(sequences)
    async with repo._database.engine.connect() as connection:
        reply_rows = await connection.scalar(
            select(func.count()).select_from(MessageRow).where(MessageRow.reply_to.is_not(None))
        )
    assert reply_rows == TOTAL


async def test_concurrent_mark_processed_on_one_id_stores_one_reply(repo):
    await repo.create_message(NewMessage(author="alice", text="question", id="q1"))

    results = await asyncio.gather(
        *(
            repo.mark_processed("q1", NewMessage(author="bot", text=f"answer {i}"))
            for i in range(10)
        )
    )

    assert [r.already_processed for r in results].count(False) == 1
    assert len({r.reply.id for r in results}) == 1
    assert len(await repo.list_messages(reply_to="q1")) == 1


async def test_concurrent_creates_of_one_id_store_it_once(repo):
    results = await asyncio.gather(
        *(repo.create_message(NewMessage(author="alice", text="same", id="m1")) for _ in range(10))
    )

    assert [r.already_existed for r in results].count(False) == 1
    assert len({r.message.sequence for r in results}) == 1
    conflicting = await asyncio.gather(
        *(repo.create_message(NewMessage(author="eve", text="other", id="m1")) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, AlreadyExists) for r in conflicting)
    assert len(await repo.list_messages()) == 1


async def test_two_repositories_on_one_sqlite_file_do_not_fail_each_other(tmp_path):
    # Two store processes on one SQLite file: each has its own engine and write lock, so
    # only SQLite's own locking (busy_timeout) keeps them apart; no write may fail for it.
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    engines = [create_engine(url), create_engine(url)]
    repos = [MessageRepository(Database(e), clock_ns=time.time_ns) for e in engines]
    try:
        await upgrade_to_head(repos[0].database)

        async def writer(repository: MessageRepository, name: str) -> None:
            for i in range(30):
                await repository.create_message(NewMessage(author=name, text=str(i)))

        async with asyncio.timeout(30):
            await asyncio.gather(*(writer(repos[i % 2], f"w{i}") for i in range(6)))

        assert len(await repos[1].list_messages(limit=1000)) == 180
    finally:
        for repository in repos:
            await repository.dispose()
