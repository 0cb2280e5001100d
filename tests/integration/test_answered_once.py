"""The promise ackbot is for, at scale: every message answered exactly once. One test, one row per
way of getting there: many clients at once, a backlog stored before any bot runs, several bots
sharing the work, and the same on a PostgreSQL store. Each row lists the whole store at the end
and checks every original and every reply (harness.check_answered_once)."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ackbot.testing import Service, responders
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    check_answered_once,
    count_state,
    create_many,
    list_all,
    wait_settled,
)
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Scenario:
    count: int
    clients: int
    personas: tuple[str, ...]
    bot_options: dict[str, Any] = field(default_factory=dict)
    # False: every message is stored (and checked PENDING) before the first bot starts.
    bots_first: bool = True
    postgres: bool = False
    # Several bots with little room each: more than one must have done some of the work.
    shared: bool = False
    within: float = 90


SCENARIOS = [
    # 500 messages from 10 concurrent clients, a bot running.
    pytest.param(
        Scenario(500, 10, ("ackbot",), {"max_in_flight": 16}),
        id="500-from-10-clients",
    ),
    # A backlog bigger than the 1,000-key page that broke the old fix.
    pytest.param(
        Scenario(1500, 10, ("ackbot",), {"max_in_flight": 32}, bots_first=False, within=100),
        id="1500-backlog-before-the-bot",
    ),
    # Three bots on one store: each message goes to one of them at a time. A short think time
    # and little room each, so no single bot can take everything.
    pytest.param(
        Scenario(
            330,
            10,
            ("ada", "bea", "cyd"),
            {
                "max_in_flight": 4,
                "responder": responders.spec("slow"),
                "env": {"ACKBOT_TEST_RESPONDER_DELAY": "0.01"},
            },
            shared=True,
        ),
        id="330-three-bots",
    ),
    # The scale-out engine: a store on a real PostgreSQL server, two bots.
    pytest.param(
        Scenario(300, 6, ("pg-one", "pg-two"), postgres=True),
        id="300-postgres-two-bots",
        marks=pytest.mark.postgres,
    ),
]


@pytest.fixture
async def store_args(scenario: Scenario) -> AsyncIterator[list[str]]:
    """The store's database: its own SQLite file, or a PostgreSQL database of its own, dropped
    after the store stopped (the store fixture asks for this first)."""
    if not scenario.postgres:
        yield []
        return
    async with fresh_database() as url:
        yield ["--db", url]


@pytest.fixture
async def store(store_args, start_store) -> Service:
    return await start_store.started(args=store_args)


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_every_message_is_answered_exactly_once(scenario: Scenario, stub, start_bot):
    async def start_bots() -> None:
        for persona in scenario.personas:
            await start_bot(persona=persona, **scenario.bot_options)

    if scenario.bots_first:
        await start_bots()
    ids = await create_many(stub, scenario.count, clients=scenario.clients, prefix="once")
    if not scenario.bots_first:
        assert await count_state(stub, pb.MESSAGE_STATE_PENDING) == scenario.count
        await start_bots()
    await wait_settled(stub, expected_processed=2 * scenario.count, within=scenario.within)

    messages = await list_all(stub)
    assert len(messages) == 2 * scenario.count, "the originals and a reply each, nothing else"
    replies = check_answered_once(messages, ids, personas=scenario.personas)
    for message_id in ids[::50]:
        by_filter = await list_all(stub, reply_to=message_id)
        assert [r.id for r in by_filter] == [replies[message_id].id]
    # A reply is never work: nothing ever delivered one, so it has no attempts and no reply.
    assert not await list_all(stub, reply_to=next(iter(replies.values())).id)
    originals = [m for m in messages if not m.reply_to]
    assert all(m.delivery_attempts >= 1 for m in originals)
    assert {m.state for m in messages} == {pb.MESSAGE_STATE_PROCESSED}
    if scenario.shared:
        work = collections.Counter(reply.author for reply in replies.values())
        assert len(work) > 1, f"one bot did all the work: {dict(work)}"
