"""The store registry: every lease names the store that granted it (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ackbot.store.models import MessageRow, State
from ackbot.store.repository import Lease, MessageRepository, NewMessage

from .conftest import SECOND_NS

LEASE_NS = 60 * SECOND_NS


async def owners(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(MessageRow.id, MessageRow.owner_store))
        return {row.id: row.owner_store for row in rows}


async def create_all(repo: MessageRepository, *ids: str) -> None:
    for message_id in ids:
        await repo.create_message(
            NewMessage(author="ana", text=f"text {message_id}", id=message_id)
        )


# -- the owner of a lease (both dialects) -----------------------------------------------------


async def test_a_claim_records_its_store_and_every_way_out_of_leased_clears_it(
    engine, make_repo, clock
):
    repo = await make_repo(store_id="store-a", max_attempts=2)
    await create_all(repo, "marked", "failed", "handed-back", "stream-ended", "still-leased")
    deliveries = {d.message.id: d for d in await repo.claim(5, LEASE_NS)}
    assert set((await owners(engine)).values()) == {"store-a"}

    await repo.mark_processed("marked", None, deliveries["marked"].lease_token)
    token = deliveries["failed"].lease_token
    await repo.release("failed", token, reason="boom", retry_after_ns=0)
    token = deliveries["handed-back"].lease_token
    await repo.release("handed-back", token, reason="", retry_after_ns=0)
    await repo.release_leases([Lease("stream-ended", deliveries["stream-ended"].lease_token)])
    await repo.extend_lease("still-leased", deliveries["still-leased"].lease_token, LEASE_NS)

    assert await owners(engine) == {
        "marked": None,
        "failed": None,
        "handed-back": None,
        "stream-ended": None,
        "still-leased": "store-a",  # extending keeps the owner
    }


async def test_a_message_that_dies_in_a_claim_has_no_owner(engine, make_repo, clock):
    repo = await make_repo(store_id="store-a", max_attempts=1)
    await create_all(repo, "m1")
    await repo.claim(1, LEASE_NS)
    clock.advance(ns=LEASE_NS)

    assert await repo.claim(1, LEASE_NS) == []  # the claim after the last attempt kills it

    assert (await repo.get_message("m1")).state is State.DEAD
    assert await owners(engine) == {"m1": None}


async def test_a_store_that_owns_its_database_records_no_owner(engine, repo):
    await create_all(repo, "m1")
    await repo.claim(1, LEASE_NS)

    assert repo.store_id is None
    assert await owners(engine) == {"m1": None}
