"""The database module: engine set-up, what the dialect decides, and driver errors wrapped at
the boundary. Dialect-dependent tests run on SQLite and, when ACKBOT_TEST_POSTGRES_URL is set,
on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from ackbot.store.database import Database, create_engine
from ackbot.store.errors import StorageFull, StorageUnavailable
from ackbot.store.migrations import upgrade_to_head
from ackbot.store.models import MessageRow
from ackbot.store.repository import MessageRepository
from ackbot.store.session_bounds import SessionBounds
from ackbot.store.types import NewMessage
from ackbot.testing import wait_until


def is_sqlite(engine) -> bool:
    return engine.url.get_backend_name() == "sqlite"


def driver_error(message: str) -> OperationalError:
    return OperationalError("UPDATE messages ...", {}, Exception(message))


async def test_only_an_sqlite_database_has_a_single_owner(engine):
    assert Database(engine).single_owner is is_sqlite(engine)


async def test_insert_is_the_dialects_own_with_on_conflict(engine):
    insert = Database(engine).insert(MessageRow.__table__)

    assert isinstance(insert, sqlite.Insert if is_sqlite(engine) else postgresql.Insert)
    statement = insert.on_conflict_do_nothing(index_elements=["id"])
    assert "ON CONFLICT (id) DO NOTHING" in str(statement.compile(dialect=engine.dialect))


async def test_driver_errors_become_storage_unavailable(engine):
    database = Database(engine)

    with pytest.raises(StorageUnavailable, match="database unavailable: database is locked"):
        async with database.translate_errors():
            raise driver_error("database is locked")
    with pytest.raises(StorageUnavailable, match="database unreachable: connection refused"):
        async with database.translate_errors():
            raise ConnectionRefusedError("connection refused")


async def test_full_means_storage_full_on_sqlite_only(engine):
    # On PostgreSQL the word turns up in errors that are not about space.
    expected = StorageFull if is_sqlite(engine) else StorageUnavailable

    with pytest.raises(expected):
        async with Database(engine).translate_errors():
            raise driver_error("database or disk is full")


async def test_conflicts_pass_untranslated_for_group_commit_to_rerun(engine):
    conflict = IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))

    with pytest.raises(IntegrityError) as caught:
        async with Database(engine).translate_errors():
            raise conflict
    assert caught.value is conflict


async def test_a_full_sqlite_file_is_storage_full(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    database = Database(engine)

    # The writes run on the database's own engine (one hop per transaction), the schema on the
    # async one: both are limited.
    @event.listens_for(database.sync_engine, "connect")
    @event.listens_for(engine.sync_engine, "connect")
    def limit_pages(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA max_page_count=32")  # the schema takes about ten pages
        cursor.close()

    repository = MessageRepository(database)
    try:
        await upgrade_to_head(repository.database)

        async def fill() -> None:
            for i in range(100):
                await repository.create_message(NewMessage(author="a", text="x" * 4000, id=str(i)))

        with pytest.raises(StorageFull):
            await fill()
    finally:
        await repository.dispose()


async def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        async with engine.connect() as connection:
            journal = await connection.exec_driver_sql("PRAGMA journal_mode")
            assert journal.scalar() == "wal"
            foreign_keys = await connection.exec_driver_sql("PRAGMA foreign_keys")
            assert foreign_keys.scalar() == 1
            synchronous = await connection.exec_driver_sql("PRAGMA synchronous")
            assert synchronous.scalar() == 2  # FULL: each commit fsynced before it returns
    finally:
        await engine.dispose()


async def test_sqlite_synchronous_normal_is_applied_when_asked_for(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db", sqlite_synchronous="NORMAL")
    try:
        async with engine.connect() as connection:
            synchronous = await connection.exec_driver_sql("PRAGMA synchronous")
            assert synchronous.scalar() == 1
    finally:
        await engine.dispose()


# -- every PostgreSQL session bounded and named (SessionBounds) -------------------------------

BOUNDS = SessionBounds(
    application_name="ackbot-store:bounded",
    idle_in_transaction_seconds=0.5,
    statement_seconds=7,
    lock_seconds=2,
    keepalive_seconds=6,
)
_SETTINGS = text(
    "SELECT name, setting FROM pg_settings WHERE name IN ('application_name', "
    "'idle_in_transaction_session_timeout', 'statement_timeout', 'lock_timeout', "
    "'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', "
    "'tcp_user_timeout')"
)


@pytest.mark.postgres
async def test_every_postgres_session_carries_the_stores_bounds_and_name(postgres_url):
    database = Database.from_url(postgres_url, bounds=BOUNDS)
    try:
        async with database.connect() as connection:
            settings = {row.name: row.setting for row in await connection.execute(_SETTINGS)}
        async with database.dedicated_connection() as registry_session:
            name = await registry_session.scalar(text("SELECT current_setting('application_name')"))
        listener = await database.connect_listener("ackbot-store-listener")
        try:
            listener_timeout = await listener.fetchval("SELECT current_setting('lock_timeout')")
        finally:
            await listener.close()
    finally:
        await database.dispose()
    # In the units PostgreSQL keeps them: milliseconds, keepalives in whole seconds. Unanswered
    # probes every 2 s, three of them: the host is given up 12 s after it fell silent.
    assert settings == {
        "application_name": "ackbot-store:bounded",
        "idle_in_transaction_session_timeout": "500",
        "statement_timeout": "7000",
        "lock_timeout": "2000",
        "tcp_keepalives_idle": "6",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "12000",
    }
    assert name == "ackbot-store:bounded"
    assert listener_timeout == "2s"


@pytest.mark.postgres
async def test_the_server_ends_a_session_left_idle_inside_a_transaction(postgres_url):
    database = Database.from_url(postgres_url, bounds=BOUNDS)
    try:
        async with database.engine.connect() as stalled:
            # Inside a transaction, holding a lock as the insert turn would be held.
            pid = await stalled.scalar(text("SELECT pg_backend_pid()"))
            await stalled.execute(text("SELECT pg_advisory_xact_lock(424242)"))

            async def ended() -> bool:
                async with database.connect() as watcher:
                    rows = await watcher.execute(
                        text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                    )
                    return rows.first() is None

            await wait_until(ended, within=10, what="the idle transaction's session ended")
            async with database.connect() as other:
                taken = await other.scalar(text("SELECT pg_try_advisory_lock(424242)"))
                await other.execute(text("SELECT pg_advisory_unlock(424242)"))
            assert taken, "the lock went with the session"
            with pytest.raises(StorageUnavailable):
                async with database.translate_errors():
                    await stalled.execute(text("SELECT 1"))
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_a_schema_change_is_not_bounded_by_the_statement_and_lock_timeouts(postgres_url):
    database = Database.from_url(postgres_url, bounds=BOUNDS)
    try:
        async with database.schema_change() as connection:
            inside = (
                await connection.execute(
                    text(
                        "SELECT current_setting('statement_timeout'), "
                        "current_setting('lock_timeout')"
                    )
                )
            ).one()
        async with database.connect() as connection:
            after = await connection.scalar(text("SELECT current_setting('statement_timeout')"))
    finally:
        await database.dispose()
    assert tuple(inside) == ("0", "0")
    assert after == "7s", "lifted for that transaction only"
