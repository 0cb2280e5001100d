"""Stores that share a PostgreSQL database wake each other: two stores in one test, each with
its repository, manager, listener and fake clock, on one database (PostgreSQL only).

The two clocks read the same time (the test moves both) but keep their timers apart, so a test
can see which store armed a timed wake. The fallback poll is 30 s, far beyond any deadline
here: a delivery within the deadline is the notification's doing, unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ackbot.store.database import WORK_CHANNEL, Database
from ackbot.store.listener import APPLICATION_NAME, WorkListener
from ackbot.store.manager import MessageManager
from ackbot.store.models import State
from ackbot.store.repository import MessageRepository
from ackbot.store.types import Delivery, Lease, NewMessage
from ackbot.testing import wait_until
from tests.integration.postgres import requires_postgres

from .conftest import SECOND_NS, START_NS, FakeClock, MakeRepository
from .test_manager import DEADLINE, LEASE_NS, Consumer, create, let_streams_look

pytestmark = [
    pytest.mark.postgres,
    requires_postgres,
    # The engine fixture's PostgreSQL case only: SQLite has one store per file.
    pytest.mark.parametrize("engine", ["postgres"], indirect=True),
]

LONG_POLL_SECONDS = 30.0
CHECK_SECONDS = 1.0


@dataclass
class Store:
    """One store of the test: what StoreServer wires together, minus gRPC."""

    name: str
    clock: FakeClock
    repo: MessageRepository
    manager: MessageManager
    listener: WorkListener
    consumers: list[Consumer] = field(default_factory=list)
    claims_done: int = 0

    def open(self, *, max_in_flight: int = 1, lease_ns: int = LEASE_NS) -> Consumer:
        consumer = Consumer(
            self.manager, f"bot-{self.name}", max_in_flight=max_in_flight, lease_ns=lease_ns
        )
        self.consumers.append(consumer)
        return consumer

    def count_claims(self) -> None:
        claim = self.repo.claim

        async def counted(limit: int, lease_ns: int) -> list[Delivery]:
            try:
                return await claim(limit, lease_ns)
            finally:
                self.claims_done += 1

        self.repo.claim = counted  # type: ignore[method-assign]

    async def idle(self, claims: int = 1) -> None:
        """Waits until this store's streams made `claims` claims (and so wait for a wake)."""
        await wait_until(lambda: self.claims_done >= claims, DEADLINE, interval=0.01)
        await let_streams_look()

    async def close(self) -> None:
        await self.listener.stop()
        await self.manager.close_streams(handler_wait_seconds=DEADLINE)
        async with asyncio.timeout(DEADLINE):
            outcomes = await asyncio.gather(
                *(c.task for c in self.consumers), return_exceptions=True
            )
        assert not [o for o in outcomes if not isinstance(o, asyncio.CancelledError | None)]


MakeStore = Callable[..., Awaitable[Store]]


@pytest.fixture
async def make_store(make_repo: MakeRepository, engine: AsyncEngine) -> AsyncIterator[MakeStore]:
    stores: list[Store] = []

    async def make(
        name: str,
        *,
        poll_seconds: float = LONG_POLL_SECONDS,
        connect: Callable[[], Awaitable[Any]] | None = None,
        listen: bool = True,
    ) -> Store:
        clock = FakeClock()
        repo = await make_repo(clock_ns=clock)
        manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
        listener = WorkListener(
            Database(engine),
            repo.store_id,
            manager.work_made_elsewhere,
            poll_seconds=poll_seconds,
            check_seconds=CHECK_SECONDS,
            connect=connect,
        )
        store = Store(name, clock, repo, manager, listener)
        store.count_claims()
        stores.append(store)
        if listen:
            await listener.start(first_listen_within=DEADLINE)
            assert listener.listening
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def stores(make_store: MakeStore) -> tuple[Store, Store]:
    return await make_store("a"), await make_store("b")


def advance(*stores: Store, seconds: float = 0, ns: int = 0) -> None:
    """Moves every store's clock by the same amount (their timers fire as they pass)."""
    for store in stores:
        store.clock.advance(seconds, ns=ns)


async def test_a_create_through_one_store_wakes_a_stream_on_another(stores):
    a, b = stores
    consumer = b.open(max_in_flight=3)
    await b.idle()
    assert consumer.batches.empty()

    await create(a.manager, "hello")

    assert await consumer.next_ids() == ["hello"]
    assert b.listener.notifications >= 1
    assert a.listener.notifications == 0  # a store ignores its own notifications


async def test_a_release_with_retry_after_on_one_store_wakes_another_when_it_ends(stores):
    a, b = stores
    await create(a.manager, "m")
    (lease,) = await a.repo.claim(1, LEASE_NS)  # a stream of A's took it (no stream of B's)
    consumer = b.open()
    await b.idle()  # B's claim came back short; its timed wake is A's lease expiry
    await wait_until(lambda: b.clock.timers == [START_NS + LEASE_NS], DEADLINE, interval=0.01)

    released = await a.manager.release(
        "m", lease.lease_token, reason="model timed out", retry_after_ns=5 * SECOND_NS
    )

    assert released.state is State.PENDING
    # A's notification makes B read its next timed wake from the database: the retry_after.
    await wait_until(lambda: b.clock.timers == [START_NS + 5 * SECOND_NS], DEADLINE, interval=0.01)
    advance(a, b, ns=5 * SECOND_NS - 1)
    await let_streams_look()
    assert consumer.batches.empty()
    advance(a, b, ns=1)
    (again,) = await consumer.next()
    assert (again.message.id, again.message.delivery_attempts) == ("m", 2)
    assert again.message.last_error == "model timed out"


async def test_a_lease_granted_by_one_store_that_lapses_goes_to_another_with_no_write_there(
    stores,
):
    a, b = stores
    hung = a.open(lease_ns=SECOND_NS)
    await create(a.manager, "m")
    (first,) = await hung.next()
    consumer = b.open()
    await b.idle()
    assert consumer.batches.empty()  # leased to A's stream
    # B's claim came back short, so B read its next timed wake: the expiry of A's lease.
    await wait_until(lambda: b.clock.timers == [first.lease_expire_ns], DEADLINE, interval=0.01)

    advance(a, b, seconds=1)  # the lease lapses; nothing is written anywhere

    (again,) = await consumer.next()
    assert (again.message.id, again.message.delivery_attempts) == ("m", 2)
    assert hung.batches.empty()  # the hung stream's slot stays taken


async def test_the_fallback_poll_finds_work_when_no_notification_comes(make_store):
    a = await make_store("a")

    async def refused() -> Any:
        raise OSError("connection refused (by the test)")

    b = await make_store("b", poll_seconds=0.05, connect=refused, listen=False)
    await b.listener.start(first_listen_within=0)
    assert not b.listener.listening
    consumer = b.open()
    await b.idle()

    await create(a.manager, "m")

    assert await consumer.next_ids() == ["m"]
    assert b.listener.notifications == 0


async def test_a_listener_whose_session_is_killed_reconnects_and_catches_up(
    make_store, engine, caplog
):
    caplog.set_level(logging.INFO, logger="ackbot.store.listener")
    a = await make_store("a")
    gate = asyncio.Event()
    gate.set()

    async def gated_connect() -> Any:
        await gate.wait()
        return await Database(engine).connect_listener(APPLICATION_NAME)

    b = await make_store("b", connect=gated_connect)
    consumer = b.open()
    await b.idle()
    pid = b.listener.backend_pid
    assert pid is not None

    gate.clear()  # B cannot reconnect until the test says so
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    await wait_until(lambda: not b.listener.listening, DEADLINE, interval=0.01)
    await create(a.manager, "meanwhile")  # its notification reaches nobody on B
    await let_streams_look()
    assert consumer.batches.empty()

    gate.set()

    # Back, B looks once for what was made while it was deaf.
    assert await consumer.next_ids() == ["meanwhile"]
    assert b.listener.connections == 2
    assert b.listener.backend_pid not in (None, pid)
    assert "stopped hearing other stores (the database closed the connection)" in caplog.text
    assert "listening for other stores' work again" in caplog.text


@contextlib.asynccontextmanager
async def heard(database: Database) -> AsyncIterator[Callable[[], Awaitable[list[str]]]]:
    """Listens on the work channel; the callable returns the payloads heard since the last call.

    It knows it has heard everything by sending a marker notification of its own and waiting
    for it: notifications arrive in commit order.
    """
    listener = await database.connect_listener("ackbot-test-listener")
    queue: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(WORK_CHANNEL, lambda *args: queue.put_nowait(args[3]))
    markers = 0

    async def since_last() -> list[str]:
        nonlocal markers
        markers += 1
        marker = f"test-marker-{markers}"
        await listener.execute("SELECT pg_notify($1, $2)", WORK_CHANNEL, marker)
        payloads = []
        async with asyncio.timeout(DEADLINE):
            while (payload := await queue.get()) != marker:
                payloads.append(payload)
        return payloads

    try:
        yield since_last
    finally:
        await listener.close()


async def test_one_notification_per_transaction_that_makes_work_and_none_otherwise(
    make_repo, engine, clock
):
    repo = await make_repo(max_attempts=2)
    us = [repo.store_id]
    async with heard(Database(engine)) as since_last:
        # Twenty creates queued together share one transaction: one notification, not twenty.
        await asyncio.gather(
            *(repo.create_message(NewMessage("alice", f"m{i}", id=f"m{i}")) for i in range(20))
        )
        assert await since_last() == us
        # A retried create inserts nothing.
        assert (await repo.create_message(NewMessage("alice", "m0", id="m0"))).already_existed
        assert await since_last() == []
        # Claims, extensions and marks make no work.
        first, second, third, fourth = await repo.claim(4, LEASE_NS)
        await repo.extend_lease(first.message.id, first.lease_token, LEASE_NS)
        await repo.mark_processed(first.message.id, NewMessage("bot", "hi"))
        assert await since_last() == []
        # A release back to PENDING does, with or without a retry_after.
        await repo.release(second.message.id, second.lease_token, reason="", retry_after_ns=0)
        await repo.release(third.message.id, third.lease_token, reason="x", retry_after_ns=1)
        assert await since_last() == us * 2
        # So does a stream's end that hands leases back.
        assert len(await repo.release_leases([Lease(fourth.message.id, fourth.lease_token)])) == 1
        assert await since_last() == us
        # A release that kills (the last attempt) makes none; the requeue that revives does.
        clock.advance(ns=1)
        (again,) = [d for d in await repo.claim(20, LEASE_NS) if d.message.id == third.message.id]
        dead = await repo.release(again.message.id, again.lease_token, reason="y", retry_after_ns=0)
        assert dead.state is State.DEAD
        assert await since_last() == []
        await repo.requeue(dead.id)
        assert await since_last() == us
