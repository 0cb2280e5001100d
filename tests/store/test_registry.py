"""The store registry: every lease names the store that granted it, and a dead store's leases
are handed back the way a stream's end hands them back.

The lease owner is checked on SQLite and PostgreSQL; the registry itself (its table, the reap,
the heartbeat, StoreRegistry's loops) only on PostgreSQL, the one database stores share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ackbot.store.database import Database
from ackbot.store.migrations import upgrade_to_head
from ackbot.store.models import MessageRow, State
from ackbot.store.registry import StoreRegistry
from ackbot.store.repository import MessageRepository
from ackbot.store.session_bounds import store_application_name
from ackbot.store.tables.transaction import INSERT_TURN_KEY
from ackbot.store.types import Lease, NewMessage
from ackbot.testing import wait_until
from tests.support.postgres import asyncpg_dsn

from .conftest import SECOND_NS, FakeClock

LEASE_NS = 60 * SECOND_NS
DEAD_AFTER = 3.0
# A pid no backend has (PostgreSQL's pids are below 2^22 by default).
NO_SUCH_PID = 2_147_483_000


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


async def test_a_lease_names_the_store_that_granted_it_on_every_database(engine, repo):
    # Only a shared database reads it (to hand back a dead store's leases), but one store id
    # names the store everywhere: its leases, its registry row, its notifications.
    await create_all(repo, "m1")
    await repo.claim(1, LEASE_NS)

    assert repo.store_id
    assert await owners(engine) == {"m1": repo.store_id}


# -- the registry's SQL (PostgreSQL) ------------------------------------------------------------


@pytest.fixture
async def make_pg_repo(postgres_engine: AsyncEngine, clock: FakeClock):
    """Repositories of several stores over one PostgreSQL schema (made once)."""
    repositories: list[MessageRepository] = []

    async def make(store_id: str, *, max_attempts: int = 2, clock_ns=clock) -> MessageRepository:
        repository = MessageRepository(
            Database(postgres_engine),
            max_attempts=max_attempts,
            clock_ns=clock_ns,
            store_id=store_id,
        )
        if not repositories:
            await upgrade_to_head(repository.database)
        repositories.append(repository)
        return repository

    yield make
    for repository in repositories:
        await repository.dispose()


class Sessions(list[AsyncConnection]):
    """The dedicated sessions of the stores a test registers, closed when the test ends."""

    def __init__(self, engine: AsyncEngine, stack: contextlib.AsyncExitStack) -> None:
        super().__init__()
        self._database = Database(engine)
        self._stack = stack

    async def open(self) -> AsyncConnection:
        connection = await self._stack.enter_async_context(self._database.dedicated_connection())
        self.append(connection)
        return connection


@pytest.fixture
async def sessions(postgres_engine: AsyncEngine) -> AsyncIterator[Sessions]:
    async with contextlib.AsyncExitStack() as stack:
        yield Sessions(postgres_engine, stack)


async def register(repo: MessageRepository, sessions: Sessions, *, silent_for: float = 0.0):
    """Registers `repo`'s store on a live session of its own, its heartbeat `silent_for` old."""
    session = await sessions.open()
    await repo.register_store(session, f"127.0.0.1:{len(sessions)}")
    if silent_for:
        async with session.begin():
            await session.execute(
                text(
                    "UPDATE stores SET heartbeat_at = heartbeat_at - make_interval(secs => :s) "
                    "WHERE id = :id"
                ),
                {"s": silent_for, "id": repo.store_id},
            )


async def register_without_session(engine: AsyncEngine, store_id: str) -> None:
    """A store whose heartbeat is fresh but whose session is gone (killed a moment ago)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO stores (id, listen_address, started_at, heartbeat_at, backend_pid, "
                "backend_start) VALUES (:id, 'gone:1', clock_timestamp(), clock_timestamp(), "
                ":pid, clock_timestamp())"
            ),
            {"id": store_id, "pid": NO_SUCH_PID},
        )


async def registered(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.scalars(text("SELECT id FROM stores")))


async def test_a_silent_store_and_one_whose_session_is_gone_are_dead_a_live_one_is_not(
    postgres_engine, make_pg_repo, sessions
):
    me = await make_pg_repo("me")
    await register(me, sessions)
    await register(await make_pg_repo("live"), sessions, silent_for=DEAD_AFTER - 1)
    await register(await make_pg_repo("silent"), sessions, silent_for=DEAD_AFTER + 1)
    await register_without_session(postgres_engine, "killed")

    dead = {store.id: store for store in await me.find_dead_stores(DEAD_AFTER)}

    assert set(dead) == {"silent", "killed"}
    assert dead["silent"].silent_seconds > DEAD_AFTER
    assert not dead["silent"].session_gone
    assert dead["killed"].session_gone
    assert dead["killed"].silent_seconds < DEAD_AFTER


async def test_a_reap_hands_back_a_dead_stores_leases_like_a_stream_end(
    postgres_engine, make_pg_repo, sessions, clock
):
    me = await make_pg_repo("me")
    await register(me, sessions)
    killed = await make_pg_repo("killed")
    await register_without_session(postgres_engine, "killed")
    await create_all(killed, "m1", "m2", "last-try", "settled")
    held = {d.message.id: d for d in await killed.claim(4, LEASE_NS)}
    await killed.mark_processed("settled", None, held["settled"].lease_token)
    async with postgres_engine.begin() as connection:
        # Already delivered max_attempts (2) times: handed back, it dies.
        await connection.execute(
            text("UPDATE messages SET delivery_attempts = 2 WHERE id = 'last-try'")
        )
    mine = await me.claim(1, LEASE_NS)  # nothing left to claim: all are leased
    assert mine == []
    await create_all(me, "ours")
    assert [d.message.id for d in await me.claim(1, LEASE_NS)] == ["ours"]

    [reaped] = await me.reap_dead_stores(DEAD_AFTER)

    assert reaped.store.id == "killed"
    assert reaped.finished
    assert sorted((r.message_id, r.state, r.delivery_attempts) for r in reaped.released) == [
        ("last-try", State.DEAD, 2),
        ("m1", State.PENDING, 1),
        ("m2", State.PENDING, 1),
    ]
    m1 = await me.get_message("m1")
    assert (m1.state, m1.delivery_attempts, m1.lease_expire_ns) == (State.PENDING, 1, None)
    dead = await me.get_message("last-try")
    assert dead.last_error == "delivered 2 times without being processed"
    assert (await me.get_message("settled")).state is State.PROCESSED
    assert await owners(postgres_engine) == {
        "m1": None,
        "m2": None,
        "last-try": None,
        "settled": None,
        "ours": "me",  # a live store's lease stays
    }
    assert await registered(postgres_engine) == {"me"}
    # Deliverable at once, to anyone; the old token is void.
    again = await me.claim(5, LEASE_NS)
    assert sorted((d.message.id, d.message.delivery_attempts) for d in again) == [
        ("m1", 2),
        ("m2", 2),
    ]
    assert {d.lease_token for d in again}.isdisjoint(d.lease_token for d in held.values())


async def test_a_reap_finds_nobody_when_everyone_is_alive(postgres_engine, make_pg_repo, sessions):
    me = await make_pg_repo("me")
    other = await make_pg_repo("other")
    await register(me, sessions)
    await register(other, sessions)
    await create_all(other, "m1")
    await other.claim(1, LEASE_NS)

    assert await me.reap_dead_stores(DEAD_AFTER) == []
    assert await owners(postgres_engine) == {"m1": "other"}
    assert await registered(postgres_engine) == {"me", "other"}


async def test_two_reapers_at_once_hand_back_each_lease_once(
    postgres_engine, make_pg_repo, sessions
):
    reapers = [await make_pg_repo(f"reaper-{i}") for i in range(3)]
    for reaper in reapers:
        await register(reaper, sessions)
    killed = await make_pg_repo("killed")
    await register_without_session(postgres_engine, "killed")
    await create_all(killed, *(f"m{i}" for i in range(20)))
    await killed.claim(20, LEASE_NS)

    results = await asyncio.gather(*(r.reap_dead_stores(DEAD_AFTER) for r in reapers))

    reaped = [r for result in results for r in result]
    assert [r.store.id for r in reaped] == ["killed"], "one reaper handled the dead store"
    assert len(reaped[0].released) == 20
    assert set((await owners(postgres_engine)).values()) == {None}


async def test_a_lease_locked_by_another_transaction_is_skipped_and_its_store_kept(
    postgres_engine, make_pg_repo, sessions
):
    me = await make_pg_repo("me")
    await register(me, sessions)
    killed = await make_pg_repo("killed")
    await register_without_session(postgres_engine, "killed")
    await create_all(killed, "m1", "m2")
    await killed.claim(2, LEASE_NS)

    async with postgres_engine.connect() as locker:
        await locker.execute(text("SELECT 1 FROM messages WHERE id = 'm2' FOR UPDATE"))
        [first] = await me.reap_dead_stores(DEAD_AFTER)
        await locker.rollback()
    [second] = await me.reap_dead_stores(DEAD_AFTER)

    assert ([r.message_id for r in first.released], first.finished) == (["m1"], False)
    assert ([r.message_id for r in second.released], second.finished) == (["m2"], True)
    assert await registered(postgres_engine) == {"me"}


async def test_leases_of_a_store_that_is_not_registered_are_handed_back(
    postgres_engine, make_pg_repo, sessions
):
    me = await make_pg_repo("me")
    await register(me, sessions)
    # Declared dead (its row deleted), it leased on before it noticed, then died as well.
    zombie = await make_pg_repo("zombie")
    await create_all(zombie, "m1", "m2")
    await zombie.claim(2, LEASE_NS)

    [found] = await me.find_dead_stores(DEAD_AFTER)
    [reaped] = await me.reap_dead_stores(DEAD_AFTER)

    assert (found.id, found.registered) == ("zombie", False)
    assert (reaped.store.id, reaped.finished) == ("zombie", True)
    assert sorted(r.message_id for r in reaped.released) == ["m1", "m2"]
    assert await owners(postgres_engine) == {"m1": None, "m2": None}
    assert await me.find_dead_stores(DEAD_AFTER) == []


async def test_the_heartbeat_is_refused_once_the_registration_is_gone(
    postgres_engine, make_pg_repo, sessions
):
    me = await make_pg_repo("me")
    await register(me, sessions, silent_for=10)
    session = sessions[0]

    assert await me.heartbeat(session)
    assert await me.find_dead_stores(DEAD_AFTER) == []
    async with postgres_engine.begin() as connection:
        await connection.execute(text("DELETE FROM stores"))
    assert not await me.heartbeat(session)


async def test_a_heartbeat_after_a_reconnect_records_the_new_session(
    postgres_engine, make_pg_repo, sessions
):
    me = await make_pg_repo("me")
    watcher = await make_pg_repo("watcher")
    await register(watcher, sessions)
    await register(me, sessions)
    await sessions.pop().close()  # the session was lost...
    assert [d.id for d in await watcher.find_dead_stores(DEAD_AFTER)] == ["me"]

    assert await me.heartbeat(await sessions.open(), new_session=True)  # ...and made again

    assert await watcher.find_dead_stores(DEAD_AFTER) == []


async def test_deregistering_hands_back_the_stores_own_leases_and_deletes_its_row(
    postgres_engine, make_pg_repo, sessions
):
    me = await make_pg_repo("me")
    other = await make_pg_repo("other")
    await register(me, sessions)
    await register(other, sessions)
    await create_all(me, "mine", "theirs")
    await me.claim(1, LEASE_NS)
    await other.claim(1, LEASE_NS)

    released = await me.deregister_store()

    assert [(r.message_id, r.state) for r in released] == [("mine", State.PENDING)]
    assert await owners(postgres_engine) == {"mine": None, "theirs": "other"}
    assert await registered(postgres_engine) == {"other"}


# -- StoreRegistry: the loops, on real time (PostgreSQL) ----------------------------------------

HEARTBEAT = 0.05


@pytest.fixture
async def start_registry(postgres_engine, make_pg_repo):
    registries: list[StoreRegistry] = []

    async def start(store_id: str, events: dict[str, int]) -> StoreRegistry:
        def count(name: str):
            return lambda: events.__setitem__(name, events.get(name, 0) + 1)

        registry = StoreRegistry(
            Database(postgres_engine),
            await make_pg_repo(store_id, clock_ns=time.time_ns),
            listen_address=f"127.0.0.1:{len(registries) + 1}",
            heartbeat_seconds=HEARTBEAT,
            dead_after_seconds=4 * HEARTBEAT,
            on_work_made=count("work_made"),
            on_declared_dead=count("declared_dead"),
        )
        await registry.start()
        registries.append(registry)
        return registry

    yield start
    for registry in registries:
        await registry.stop()


async def test_a_registry_reaps_a_dead_store_and_wakes_its_streams(
    postgres_engine, make_pg_repo, start_registry
):
    events: dict[str, int] = {}
    killed = await make_pg_repo("killed", clock_ns=time.time_ns)
    await create_all(killed, "m1")
    await killed.claim(1, LEASE_NS)
    await register_without_session(postgres_engine, "killed")
    registry = await start_registry("watcher", events)

    await wait_until(lambda: events.get("work_made"), within=10, what="the dead store reaped")

    assert await owners(postgres_engine) == {"m1": None}
    assert await registered(postgres_engine) == {registry.store_id}
    assert "declared_dead" not in events


async def test_a_registry_whose_registration_is_gone_says_so_once_and_stops_beating(
    postgres_engine, start_registry
):
    events: dict[str, int] = {}
    registry = await start_registry("stalled", events)
    async with postgres_engine.begin() as connection:
        await connection.execute(text("DELETE FROM stores"))

    await wait_until(lambda: events.get("declared_dead"), within=10, what="declared dead")

    assert registry.declared_dead
    await asyncio.sleep(5 * HEARTBEAT)  # pacing: time for more heartbeats, were there any
    assert events == {"declared_dead": 1}
    assert await registered(postgres_engine) == set(), "it did not register itself again"


async def test_a_registry_stops_by_deregistering(postgres_engine, start_registry):
    registry = await start_registry("leaving", {})
    assert await registered(postgres_engine) == {"leaving"}

    await registry.stop()
    await registry.stop()  # harmless

    assert await registered(postgres_engine) == set()


async def test_a_registry_whose_session_breaks_makes_a_new_one_and_records_it(
    postgres_engine, start_registry
):
    events: dict[str, int] = {}
    registry = await start_registry("reconnecting", events)

    async def backend() -> int:
        async with postgres_engine.connect() as connection:
            return await connection.scalar(text("SELECT backend_pid FROM stores"))

    first = await backend()
    async with postgres_engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})

    async def recorded_again() -> bool:
        return await backend() != first

    await wait_until(recorded_again, within=10, what="the new session recorded")
    assert not registry.declared_dead
    assert events == {}


async def test_a_registry_ends_the_sessions_of_a_store_it_finds_dead_and_no_others(
    postgres_engine, make_pg_repo, start_registry, caplog
):
    dsn = asyncpg_dsn(postgres_engine.url.render_as_string(hide_password=False))
    # A stalled store, silent for long: one of its sessions sits inside an inserting
    # transaction, holding the insert turn that every store's inserts wait for.
    await make_pg_repo("stalled")  # the schema
    await register_without_session(postgres_engine, "stalled")
    stalled = await asyncpg.connect(
        dsn, server_settings={"application_name": store_application_name("stalled")}
    )
    bystander = await asyncpg.connect(
        dsn, server_settings={"application_name": store_application_name("alive")}
    )
    try:
        inside = stalled.transaction()
        await inside.start()
        await stalled.execute("SELECT pg_advisory_xact_lock($1)", INSERT_TURN_KEY)

        registry = await start_registry("watcher", {})

        async def stalled_session_ended() -> bool:
            return stalled.is_closed() or not await _answers(stalled)

        await wait_until(stalled_session_ended, within=10, what="the stalled store's session ended")
        # The turn is free: the watcher's own inserts go on at once.
        watcher = await make_pg_repo("watcher-writes", clock_ns=time.time_ns)
        await asyncio.wait_for(watcher.create_message(NewMessage(author="a", text="t")), 5)
        assert await _answers(bystander), "a store that is not dead keeps its sessions"

        async def reaped() -> bool:
            return await registered(postgres_engine) == {registry.store_id}

        await wait_until(reaped, within=10, what="the stalled store's registration deleted")
        assert "of dead store=stalled" in caplog.text
    finally:
        for connection in (stalled, bystander):
            connection.terminate()


async def _answers(connection: asyncpg.Connection) -> bool:
    try:
        return await connection.fetchval("SELECT 1") == 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
        # InternalClientError: the server ended the session while a probe was still on it.
        return False
