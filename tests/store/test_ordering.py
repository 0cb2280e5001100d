"""Per-conversation ordering in the claim (ordering keys): a message waits while an earlier
message of its conversation is unsettled (PENDING, also in a retry_after; LEASED, also lapsed);
PROCESSED and DEAD ones let it go. Messages without a conversation are unaffected. On SQLite,
and on PostgreSQL (also with two stores claiming at once) when ACKBOT_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
from typing import Any

from ackbot.store.repository import MessageRepository
from ackbot.store.types import NewMessage

from .conftest import SECOND_NS, FakeClock, Gate, MakeRepository

LEASE_NS = 10 * SECOND_NS


async def post(repo: MessageRepository, message_id: str, conversation: str | None) -> None:
    await repo.create_message(
        NewMessage(author="ana", text=message_id, id=message_id, conversation_id=conversation)
    )


async def claimed(repo: MessageRepository, limit: int = 10) -> list[str]:
    return [delivery.message.id for delivery in await repo.claim(limit, LEASE_NS)]


async def test_a_conversation_is_delivered_one_message_at_a_time_in_order(repo):
    for message_id, conversation in [
        ("c1", "c"),
        ("n1", None),
        ("c2", "c"),
        ("d1", "d"),
        ("c3", "c"),
        ("n2", None),
    ]:
        await post(repo, message_id, conversation)

    assert await claimed(repo) == ["c1", "n1", "d1", "n2"]
    assert await claimed(repo) == [], "c2 waits while c1 is leased"

    marked = await repo.mark_processed("c1", NewMessage(author="bot", text="hi"))
    assert marked.unblocked
    assert await claimed(repo) == ["c2"]
    assert await claimed(repo) == []
    last = await repo.mark_processed("c2", None)
    assert last.unblocked
    assert await claimed(repo) == ["c3"]
    assert not (await repo.mark_processed("c3", None)).unblocked
    assert not (await repo.mark_processed("n1", None)).unblocked


async def test_a_message_waiting_out_a_retry_after_or_a_lapsed_lease_holds_back_the_next(
    repo, clock: FakeClock
):
    await post(repo, "c1", "c")
    await post(repo, "c2", "c")
    [first] = await repo.claim(10, LEASE_NS)
    await repo.release("c1", first.lease_token, reason="boom", retry_after_ns=5 * SECOND_NS)

    assert await claimed(repo) == [], "c1 is PENDING until its retry_after ends: c2 waits"
    clock.advance(5)
    assert await claimed(repo) == ["c1"]
    clock.advance(11)  # c1's lease lapses: still unsettled
    assert await claimed(repo) == ["c1"], "c1 again, never c2"


async def test_a_dead_message_lets_the_next_go(make_repo, clock: FakeClock):
    repo = await make_repo(max_attempts=1)
    for number in (1, 2, 3):
        await post(repo, f"c{number}", "c")
    [first] = await repo.claim(10, LEASE_NS)
    await repo.release("c1", first.lease_token, reason="boom", retry_after_ns=0)
    assert (await repo.get_message("c1")).state.value == "DEAD"
    assert await claimed(repo) == ["c2"]

    clock.advance(11)  # c2's lease lapses on its last attempt: the next claim makes it DEAD
    assert await claimed(repo) == ["c3"], "in the same claim, c3 takes c2's place"


async def test_another_store_never_leases_the_next_message_while_the_first_is_being_leased(
    make_postgres_repo: MakeRepository,
):
    store_a, store_b = [await make_postgres_repo() for _ in range(2)]
    await post(store_a, "c1", "c")
    await post(store_a, "c2", "c")
    await post(store_a, "n1", None)
    gate = Gate()
    claim = store_a._leases.claim

    def claim_then_wait(tx: Any, request: Any) -> Any:
        deliveries = claim(tx, request)
        gate.wait_here()
        return deliveries

    store_a._leases.claim = claim_then_wait  # type: ignore[method-assign]
    a_claim = asyncio.create_task(store_a.claim(1, LEASE_NS))
    try:
        async with asyncio.timeout(10):
            await gate.reached.wait()
        # c1 is locked by A's open transaction (SKIP LOCKED passes it by) and still PENDING as
        # B sees it: c2 must wait all the same.
        assert await claimed(store_b) == ["n1"]
    finally:
        gate.open()
    assert [d.message.id for d in await a_claim] == ["c1"]
    assert await claimed(store_b) == []
    await store_a.mark_processed("c1", None)
    assert await claimed(store_b) == ["c2"]


async def test_racing_claims_of_several_stores_lease_a_conversation_one_at_a_time(
    make_postgres_repo: MakeRepository,
):
    repos = [await make_postgres_repo() for _ in range(4)]
    for number in range(20):
        await post(repos[0], f"c{number:02}", "c")
    answered: list[str] = []
    for _ in range(20):
        rounds = await asyncio.gather(*(claimed(repo) for repo in repos))
        leased = [message_id for batch in rounds for message_id in batch]
        assert len(leased) == 1, f"one message of the conversation at a time, got {leased}"
        answered += leased
        await repos[0].mark_processed(leased[0], None)
    assert answered == [f"c{number:02}" for number in range(20)]
