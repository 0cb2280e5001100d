"""The real ackbot-store and its schema: a database made by a newer ackbot stops it at start with
one line, and two stores starting at once on a new PostgreSQL database both come up."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ackbot.store import migrations
from ackbot.store.database import Database, create_engine
from ackbot.testing import READY_TIMEOUT, store_service
from tests.support.postgres import asyncpg_dsn, fresh_database

HEAD = migrations.script_directory().get_current_head()


async def test_a_database_of_a_newer_ackbot_stops_the_store_with_one_line(tmp_path):
    db_path = tmp_path / "newer.db"
    engine = create_engine(f"sqlite+aiosqlite:///{db_path}")
    try:
        await migrations.upgrade_to_head(Database(engine))
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                "UPDATE alembic_version SET version_num = '9999_future'"
            )
    finally:
        await engine.dispose()
    store = store_service(tmp_path, db_path=db_path, name="old-store").expect_exit(1).start()
    try:
        code = await asyncio.to_thread(store.proc.wait, READY_TIMEOUT)
    finally:
        store.cleanup()

    log = store.log_text()
    assert code == 1, store.describe()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, store.describe()
    assert "schema is at revision 9999_future" in errors[0]
    assert f"its newest is {HEAD}" in errors[0]
    assert "run that ackbot-store (or a newer one)" in errors[0]
    assert "Traceback" not in log
    assert "listening on" not in log


@pytest.mark.slow
@pytest.mark.postgres
async def test_stores_starting_at_once_on_a_new_postgresql_database_both_come_up(tmp_path):
    stores = 2
    async with fresh_database() as url:
        services = [
            store_service(tmp_path, name=f"store-{i}", args=["--db", url]) for i in range(stores)
        ]
        try:
            for service in services:
                service.start()  # all at once: none waits for another to be ready
            await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in services))
            connection = await asyncpg.connect(asyncpg_dsn(url))
            try:
                versions = await connection.fetch("SELECT version_num FROM alembic_version")
                registered = await connection.fetchval("SELECT count(*) FROM stores")
            finally:
                await connection.close()
        finally:
            for service in services:
                service.cleanup()
    assert [v["version_num"] for v in versions] == [HEAD]
    assert registered == stores
    upgraded = [s for s in services if "database schema upgraded" in s.log_text()]
    assert len(upgraded) == 1, "one store upgraded the new database, the other found it done"
