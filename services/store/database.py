"""The database the store runs on: its engine, and every difference between SQLite and PostgreSQL
that is not plain SQL, decided here once.

- Engine set-up: SQLite in WAL mode with real write transactions (sqlite_file.py);
  PostgreSQL with a pool that tests connections before use, every session bounded and named
  (session_bounds.py): a store that stalls inside a transaction holds its locks for seconds,
  not for as long as it is stalled, and its sessions can be found and ended by the others.
- The dialect's INSERT construct: ON CONFLICT exists on both, but SQLAlchemy offers it per
  dialect only.
- Ownership: one store process owns an SQLite file, while several may share a PostgreSQL
  database (`single_owner`); those register themselves and watch each other (registry.py) on
  a session of their own (`dedicated_connection`).
- Arrival order: whether transactions that insert messages must take turns so that `sequence`
  order is commit order (`inserts_take_turns`).
- Schema changes, one store at a time (`schema_change`): SQLite's write lock, a PostgreSQL
  advisory lock.
- Wake-ups between stores that share a database: a transaction that made work announces it with
  one PostgreSQL notification (`notify_work`), which every store hears on a connection of its
  own, outside the pool (`connect_listener`). SQLite needs none: its one store hears its own
  writes in-process.
- Driver errors are wrapped at this boundary (StorageUnavailable, StorageFull) and never leak
  (driver_errors.py).
- One hop per transaction (`run_in_transaction`, `run_read`): the store's transactions are plain
  synchronous functions of a connection, run whole where the driver lives. On an SQLite file that
  is a thread of ours holding a pysqlite connection: one crossing from the event loop per
  transaction, not several per statement as through aiosqlite (each crossing costs 50-80 us of
  CPU, more than most statements). On PostgreSQL asyncpg has no thread, and the function runs in
  SQLAlchemy's greenlet bridge (`AsyncConnection.run_sync`).

The queries themselves are the same on both (the repository's); where a clause means nothing on
one dialect, SQLAlchemy leaves it out (FOR UPDATE SKIP LOCKED on SQLite, whose single writer
needs no row locks).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy import String, Table, bindparam, func, select, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ackbot.store.driver_errors import OPEN_ERRORS, cannot_open, translate_errors
from ackbot.store.errors import CannotOpenDatabase, StorageUnavailable
from ackbot.store.session_bounds import SessionBounds
from ackbot.store.sqlite_file import (
    SQLITE_READERS,
    configure_sqlite,
    on_thread,
    sqlite_file_problem,
    sqlite_path,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_SQLITE = "sqlite"
_ASYNCPG = "asyncpg"
# The channel on which stores sharing a PostgreSQL database announce work to each other. Any
# store of any ackbot database on the same server hears it: a wake that finds nothing costs one
# empty claim, nothing else.
WORK_CHANNEL = "ackbot_work"
# Built once: building a statement costs more Python than running this one.
_NOTIFY_WORK = select(func.pg_notify(WORK_CHANNEL, bindparam("store_id", type_=String)))
# The advisory lock that serializes schema upgrades, one per schema (several ackbot schemas may
# share a PostgreSQL database, and need not wait for each other). The text form keeps it apart
# from any numeric key another part of ackbot may lock.
_SCHEMA_LOCK_KEY = "hashtextextended('ackbot.store.schema:' || current_schema(), 0)"


def create_engine(
    url: str,
    *,
    lock_timeout_seconds: float = 5.0,
    sqlite_synchronous: str = "FULL",
    bounds: SessionBounds | None = None,
) -> AsyncEngine:
    """Makes the engine for `url`, with SQLite set up for WAL and real transactions, and every
    PostgreSQL session bounded by `bounds` (default: SessionBounds with `lock_timeout_seconds`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == _SQLITE:
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            # The default ./data/ackbot.db must work on a fresh checkout. A folder that cannot
            # be made is reported by Database.check_open, with the path.
            with contextlib.suppress(OSError):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        # No reset on return: a connection comes back either committed or rolled back by
        # SQLAlchemy itself, and the pool's extra ROLLBACK is one more round trip to the
        # driver's thread per transaction.
        engine = create_async_engine(url, pool_reset_on_return=None)
        configure_sqlite(engine.sync_engine, lock_timeout_seconds, sqlite_synchronous)
        return engine
    if bounds is None:
        bounds = SessionBounds(lock_seconds=lock_timeout_seconds)
    connect_args: dict[str, object] = {}
    if parsed.get_driver_name() == _ASYNCPG:
        connect_args["server_settings"] = bounds.server_settings()
    return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _detach_in_autocommit(connection: Connection) -> DBAPIConnection:
    # The pool forgets the connection (closing it then ends the session instead of returning
    # it), and the driver commits each statement by itself. Set on the driver's connection,
    # after detaching: SQLAlchemy's own isolation option would leave a reset behind in the
    # pool, to be run on whichever connection comes next.
    connection.detach()
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # a live, checked-out connection
    connection.dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
    return dbapi_connection


class Database:
    """An engine, and what its dialect means for the store."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lock_timeout_seconds: float = 5.0,
        sqlite_synchronous: str = "FULL",
        bounds: SessionBounds | None = None,
    ) -> None:
        self.engine = engine
        self.lock_timeout_seconds = lock_timeout_seconds
        self.bounds = bounds or SessionBounds(lock_seconds=lock_timeout_seconds)
        self._is_sqlite = engine.dialect.name == _SQLITE
        # An SQLite file's transactions and reads run on threads of ours, each whole (see
        # run_in_transaction); the async engine stays for start-up work (schema, checks). One
        # writer thread: group commit already runs one write transaction at a time. In memory
        # (tests of URL handling only) the async engine's own connection has the data.
        self._sync_engine: Engine | None = None
        self._writer: Executor | None = None
        self._readers: Executor | None = None
        if self._is_sqlite and sqlite_path(engine.url.database) is not None:
            self._sync_engine = create_sync_engine(
                engine.url.set(drivername="sqlite+pysqlite"), pool_reset_on_return=None
            )
            configure_sqlite(self._sync_engine, lock_timeout_seconds, sqlite_synchronous)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="ackbot-sqlite-writer")
            self._readers = ThreadPoolExecutor(
                SQLITE_READERS, thread_name_prefix="ackbot-sqlite-reader"
            )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        lock_timeout_seconds: float = 5.0,
        sqlite_synchronous: str = "FULL",
        bounds: SessionBounds | None = None,
    ) -> Database:
        return cls(
            create_engine(
                url,
                lock_timeout_seconds=lock_timeout_seconds,
                sqlite_synchronous=sqlite_synchronous,
                bounds=bounds,
            ),
            lock_timeout_seconds=lock_timeout_seconds,
            sqlite_synchronous=sqlite_synchronous,
            bounds=bounds,
        )

    @property
    def sync_engine(self) -> Engine:
        """The engine whose connections the store's transactions run on (see
        run_in_transaction): its events (begin, commit, connect) are those of every write."""
        return self._sync_engine or self.engine.sync_engine

    @property
    def single_owner(self) -> bool:
        """Whether one store process owns the whole database, as with an SQLite file.

        Then any lease found in it on start belongs to a stream of a store that is gone, and can
        be handed out again at once. A PostgreSQL database may be shared by several stores, whose
        leases are not ours to release.
        """
        return self._is_sqlite

    @property
    def inserts_take_turns(self) -> bool:
        """Whether a transaction must hold the insert turn (the repository's advisory lock)
        from before its first INSERT into messages until it commits.

        Followers read `sequence > cursor`, so a row must never become visible after one with a
        higher sequence. PostgreSQL draws a sequence at insert, and transactions commit in any
        order: an insert that commits late would be skipped. While inserts take turns, the next
        sequence is drawn only after the previous inserter's commit is visible. SQLite has one
        writer, whose write lock already makes sequence order commit order.
        """
        return not self._is_sqlite

    @property
    def announces_work(self) -> bool:
        """Whether other stores may share this database and so must hear of the work a
        transaction makes (see `notify_work`)."""
        return not self._is_sqlite

    @property
    def can_listen(self) -> bool:
        """Whether `connect_listener` works here: PostgreSQL through asyncpg."""
        return self.announces_work and self.engine.dialect.driver == _ASYNCPG

    @property
    def url(self) -> str:
        """The URL, with any password masked and an SQLite file's path made absolute: for logs,
        which should name the database really used, not one relative to a forgotten folder."""
        url = self.engine.url
        path = sqlite_path(url.database) if self._is_sqlite else None
        if path is not None:
            url = url.set(database=str(path.resolve()))
        return url.render_as_string(hide_password=True)

    async def check_open(self) -> None:
        """Opens one connection and runs a query, or raises CannotOpenDatabase naming the
        database and why (one line for the operator, no driver log on the way)."""
        path = sqlite_path(self.engine.url.database) if self._is_sqlite else None
        # Asked of the file system first, without connecting: aiosqlite does not wait for the
        # thread of a connection that failed to open, which may then answer into the closed
        # event loop with a traceback on the way out.
        problem = sqlite_file_problem(path) if path is not None else None
        if problem is not None:
            raise CannotOpenDatabase(f"cannot open the database {self.url}: {problem}")
        try:
            async with self.engine.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
        except OPEN_ERRORS as exc:
            raise cannot_open(self.url, exc) from exc

    def insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT into `table` that offers ON CONFLICT."""
        return sqlite.insert(table) if self._is_sqlite else postgresql.insert(table)

    def translate_errors(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Turns driver errors into StorageUnavailable or StorageFull (driver_errors.py)."""
        return translate_errors(disk_full_is_storage_full=self._is_sqlite)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads, outside any transaction the store opens itself."""
        async with self.translate_errors(), self.engine.connect() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed when the block ends without an error."""
        async with self.translate_errors(), self.engine.begin() as connection:
            yield connection

    async def run_in_transaction(self, body: Callable[[Connection], T]) -> T:
        """Runs `body` in one transaction, committed when it returns, rolled back when it
        raises; its result is returned, and driver errors come back translated.

        `body` is synchronous and runs whole in one hop to the driver: on an SQLite file on the
        writer thread, on PostgreSQL in SQLAlchemy's greenlet. It must not touch the event loop.
        """
        return await self._run_whole(body, self._writer, self.begin, Engine.begin)

    async def run_read(self, body: Callable[[Connection], T]) -> T:
        """Runs the reads of `body` outside any transaction of ours (a single SELECT is
        consistent on its own), in one hop, like run_in_transaction."""
        return await self._run_whole(body, self._readers, self.connect, Engine.connect)

    async def _run_whole(
        self,
        body: Callable[[Connection], T],
        executor: Executor | None,
        open_async: Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection]],
        open_sync: Callable[[Engine], contextlib.AbstractContextManager[Connection]],
    ) -> T:
        engine = self._sync_engine
        if engine is None or executor is None:
            async with open_async() as connection:
                return await connection.run_sync(body)

        def run() -> T:
            with open_sync(engine) as connection:
                return body(connection)

        async with self.translate_errors():
            return await on_thread(executor, run)

    @contextlib.asynccontextmanager
    async def schema_change(self) -> AsyncIterator[AsyncConnection]:
        """A transaction in which this store alone may change the schema: stores starting at
        once upgrade one after the other, and each finds what the one before it did.

        SQLite: `BEGIN IMMEDIATE` takes the write lock before anything is read (and makes the
        DDL one transaction: SQLite's DDL is transactional, but the driver opens transactions
        only for INSERT, UPDATE and DELETE). PostgreSQL, whose DDL is transactional too: an
        advisory lock held for the transaction, so commit, rollback or the session's death
        release it, with no unlock to miss on an error path. The session's statement and lock
        bounds (SessionBounds) do not hold here: an upgrade of a large table may take long,
        and so may waiting for another store's.
        """
        async with self.begin() as connection:
            if self._is_sqlite:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await connection.execute(
                    text(
                        "SELECT set_config('statement_timeout', '0', true), "
                        "set_config('lock_timeout', '0', true)"
                    )
                )
                taken = await connection.scalar(
                    text(f"SELECT pg_try_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
                )
                if not taken:
                    log.info("waiting for another store to finish upgrading the schema")
                    await connection.execute(
                        text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
                    )
            yield connection

    @contextlib.asynccontextmanager
    async def dedicated_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection of its own, outside the pool, closed when the block ends.

        Made the way the pool makes its connections (same URL, arguments and set-up), then
        detached: a session that is always there, whose backend others can look up, and whose
        statements never queue behind a busy pool. In autocommit: each statement commits by
        itself, so a process stopped between two statements holds no lock.
        """
        async with self.translate_errors():
            connection = await self.engine.connect()
            dbapi_connection = await connection.run_sync(_detach_in_autocommit)
            try:
                yield connection
            finally:
                try:
                    await connection.close()
                finally:
                    # After a disconnect SQLAlchemy invalidates the connection, and lets go of
                    # a detached one without closing it: close the driver's connection anyway.
                    self.engine.dialect.do_terminate(dbapi_connection)

    def notify_work(self, connection: Connection, store_id: str) -> None:
        """Announces, inside the open transaction on `connection`, that it made work.

        PostgreSQL delivers the notification when (and only if) the transaction commits, to every
        session listening on WORK_CHANNEL then; the payload names the store that made it, so
        that store can ignore its own. A notifying commit takes a lock global to the server (to
        keep notifications in commit order), so the caller issues one per transaction, never one
        per row. Nothing on SQLite.
        """
        if self.announces_work:
            connection.execute(_NOTIFY_WORK, {"store_id": store_id})

    async def connect_listener(self, application_name: str) -> asyncpg.Connection:
        """A new asyncpg connection to this database, outside the pool, for LISTEN.

        Not from the pool: a pooled connection is reset and handed to other work, and LISTEN
        lives as long as its session. Made from the engine's URL (host, port, user, password,
        database and its query options); `application_name` lets an operator find it in
        pg_stat_activity. Driver errors come back as StorageUnavailable.
        """
        if not self.can_listen:
            raise StorageUnavailable(f"cannot LISTEN on {self.url}: PostgreSQL and asyncpg only")
        _, params = self.engine.dialect.create_connect_args(self.engine.url)
        # SQLAlchemy's own options for its asyncpg adapter, not asyncpg's.
        for option in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            params.pop(option, None)
        try:
            connection: asyncpg.Connection = await asyncpg.connect(
                **params,
                server_settings={
                    **self.bounds.server_settings(),
                    "application_name": application_name,
                },
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(f"database unreachable: {exc}") from exc
        return connection

    async def dispose(self) -> None:
        # Called once the writes have committed (group commit closed first); a read still on a
        # reader thread finishes on its own connection, which dispose does not close.
        for executor in (self._writer, self._readers):
            if executor is not None:
                executor.shutdown(wait=False)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        await self.engine.dispose()
