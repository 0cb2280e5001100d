"""Fixtures for the store's unit tests: a real database (SQLite file, and PostgreSQL when
ACKBOT_TEST_POSTGRES_URL is set) and a clock the test moves by hand."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from ackbot.store.database import Database, create_engine
from ackbot.store.migrations import upgrade_to_head
from ackbot.store.repository import MessageRepository
from tests.integration.postgres import process_database, requires_postgres

SECOND_NS = 1_000_000_000
# 2025-10-24T19:20:53Z: any fixed instant serves, as long as it is not 0.
START_NS = 1_761_333_653_000_000_000


class FakeTimer:
    def __init__(self, at_ns: int, callback: Callable[[], None]) -> None:
        self.at_ns = at_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock_ns for the repository and the manager: it moves only when the test says so.

    Its `call_at` stands in for the event loop's timers: a timer fires when `advance` reaches
    its time, so timed wakes need no real waiting either.
    """

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns
        self._timers: list[FakeTimer] = []

    def __call__(self) -> int:
        return self.now_ns

    def call_at(self, at_ns: int, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(at_ns, callback)
        self._timers.append(timer)
        return timer

    @property
    def timers(self) -> list[int]:
        """When the timers still to fire are due, earliest first."""
        return sorted(t.at_ns for t in self._timers if not t.cancelled)

    def advance(self, seconds: float = 0, *, ns: int = 0) -> int:
        self.now_ns += round(seconds * SECOND_NS) + ns
        # One at a time, earliest first: a callback may set or cancel timers.
        while due := [t for t in self._timers if not t.cancelled and t.at_ns <= self.now_ns]:
            timer = min(due, key=lambda t: t.at_ns)
            self._timers.remove(timer)
            timer.callback()
        self._timers = [t for t in self._timers if not t.cancelled]
        return self.now_ns


class Gate:
    """Holds a write transaction inside one of its handlers until `open()`, wherever the
    handler runs: on an SQLite file the writer thread, on PostgreSQL a greenlet on the event
    loop (Database.run_in_transaction). `reached` is set once a handler waits at it."""

    # Long enough for any test, short enough that a forgotten `open()` does not hang the run.
    HOLD_SECONDS = 30.0

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.reached = asyncio.Event()
        self._opened = asyncio.Event()
        self._opened_for_threads = threading.Event()

    def wait_here(self) -> None:
        """Called by a handler: blocks its transaction until the gate opens."""
        if threading.get_ident() == self._loop_thread:
            self.reached.set()
            await_only(asyncio.wait_for(self._opened.wait(), self.HOLD_SECONDS))
        else:
            self._loop.call_soon_threadsafe(self.reached.set)
            self._opened_for_threads.wait(self.HOLD_SECONDS)

    def open(self) -> None:
        self._opened.set()
        self._opened_for_threads.set()


def count_events(repo: MessageRepository, name: str) -> list[int]:
    """A one-element list counting the `name` events ("begin", "commit") of the engine the
    repository's transactions run on. Reads begin too, but never commit."""
    seen = [0]

    @event.listens_for(repo._database.sync_engine, name)
    def on_event(_connection: object) -> None:
        seen[0] += 1

    return seen


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@contextlib.asynccontextmanager
async def _postgres_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine whose search_path is a fresh schema, dropped after the test."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_async_engine(url)
    try:
        async with admin.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = create_async_engine(
            url, pool_pre_ping=True, connect_args={"server_settings": {"search_path": schema}}
        )
        try:
            yield engine
        finally:
            await engine.dispose()
            async with admin.begin() as connection:
                await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """This test process's own database; each test makes a schema of its own in it."""
    with process_database() as url:
        yield url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[pytest.mark.postgres, requires_postgres],
        ),
    ]
)
async def engine(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        sqlite_engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
        try:
            yield sqlite_engine
        finally:
            await sqlite_engine.dispose()
    else:
        url = request.getfixturevalue("postgres_url")
        async with _postgres_engine(url) as postgres_engine:
            yield postgres_engine


@pytest.fixture(params=[pytest.param("postgres", marks=[pytest.mark.postgres, requires_postgres])])
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL alone, for what only a shared database has (the store registry)."""
    async with _postgres_engine(postgres_url) as postgres_engine:
        yield postgres_engine


MakeRepository = Callable[..., Awaitable[MessageRepository]]


def _repository_maker(engine: AsyncEngine, clock: FakeClock) -> MakeRepository:
    created = False

    async def make(
        *,
        max_attempts: int = 3,
        clock_ns: Callable[[], int] = clock,
        store_id: str | None = None,
    ) -> MessageRepository:
        nonlocal created
        repository = MessageRepository(
            Database(engine), max_attempts=max_attempts, clock_ns=clock_ns, store_id=store_id
        )
        if not created:
            await upgrade_to_head(repository.database)
            created = True
        return repository

    return make


@pytest.fixture
async def make_repo(engine: AsyncEngine, clock: FakeClock) -> MakeRepository:
    """Builds repositories over the test's database (schema created once): each is a store
    of its own, with its own group commit, sharing the database."""
    return _repository_maker(engine, clock)


@pytest.fixture
async def make_postgres_repo(postgres_engine: AsyncEngine, clock: FakeClock) -> MakeRepository:
    """make_repo on PostgreSQL alone."""
    return _repository_maker(postgres_engine, clock)


@pytest.fixture
async def repo(make_repo: MakeRepository) -> MessageRepository:
    """max_attempts=3 over the fake clock."""
    return await make_repo()
