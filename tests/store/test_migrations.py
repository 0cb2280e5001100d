"""Schema migrations: a new database gets head, a database made before migrations is adopted as
the baseline and upgraded with its messages, one made by a newer ackbot is refused, and stores
starting at once take turns. On SQLite, and on PostgreSQL when ACKBOT_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ackbot.store import migrations
from ackbot.store.database import Database, create_engine
from ackbot.store.errors import SchemaTooNew
from ackbot.store.models import Base
from ackbot.store.repository import MessageRepository
from ackbot.store.types import NewMessage

from .conftest import FakeClock

HEAD = migrations.script_directory().get_current_head()

# The messages table as ackbot made it with create_all before it had migrations (models.py at
# commit 0bd529a), frozen here: the databases out there that the baseline must adopt.
_UNSETTLED = text("state IN ('PENDING', 'LEASED')")
LEGACY = MetaData()
Table(
    "messages",
    LEGACY,
    Column(
        "sequence",
        BigInteger().with_variant(Integer, "sqlite"),
        Sequence("messages_sequence_seq"),
        primary_key=True,
    ),
    Column("id", String(128), unique=True, nullable=False),
    Column("author", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("create_time_ns", BigInteger),
    Column("receive_time_ns", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reply_to", String(128), ForeignKey("messages.id"), unique=True),
    Column("delivery_attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("visible_at_ns", BigInteger, nullable=False, default=0),
    Column("lease_token", String(64)),
    Column("process_time_ns", BigInteger),
    CheckConstraint(
        "state IN ('PENDING', 'LEASED', 'PROCESSED', 'DEAD')", name="ck_messages_state"
    ),
    Index("ix_messages_state_sequence", "state", "sequence"),
    Index(
        "ix_messages_unsettled_sequence",
        "sequence",
        sqlite_where=_UNSETTLED,
        postgresql_where=_UNSETTLED,
    ),
    Index(
        "ix_messages_unsettled_visible_at",
        "visible_at_ns",
        sqlite_where=_UNSETTLED,
        postgresql_where=_UNSETTLED,
    ),
)


def legacy_row(message_id: str, **values: Any) -> dict[str, Any]:
    """A message as an earlier ackbot stored it (its sequence from the database, as then)."""
    return {
        "id": message_id,
        "author": "ana",
        "text": f"text of {message_id}",
        "create_time_ns": None,
        "receive_time_ns": 1,
        "state": "PENDING",
        "reply_to": None,
        "delivery_attempts": 0,
        "last_error": None,
        "visible_at_ns": 0,
        "lease_token": None,
        "process_time_ns": None,
        **values,
    }


def describe(connection: Connection) -> dict[str, Any]:
    """Everything about the messages table that the database itself reports."""
    inspector = inspect(connection)
    described: dict[str, Any] = {
        "columns": [
            (c["name"], str(c["type"]), c["nullable"], c.get("default"))
            for c in inspector.get_columns("messages")
        ],
        "primary_key": inspector.get_pk_constraint("messages")["constrained_columns"],
        "unique": sorted(
            tuple(u["column_names"]) for u in inspector.get_unique_constraints("messages")
        ),
        "foreign_keys": [
            (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
            for fk in inspector.get_foreign_keys("messages")
        ],
        "checks": sorted(
            (c["name"], c["sqltext"]) for c in inspector.get_check_constraints("messages")
        ),
        "indexes": sorted(
            (
                i["name"],
                tuple(i["column_names"]),
                i["unique"],
                sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()),
            )
            for i in inspector.get_indexes("messages")
        ),
    }
    if connection.dialect.name == "sqlite":
        # The table's own SQL: "sequence INTEGER ... PRIMARY KEY" makes it the rowid.
        described["sql"] = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'messages'"
        ).scalar()
    else:
        described["sequences"] = inspector.get_sequence_names()
    return described


async def version(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list(await connection.scalars(text("SELECT version_num FROM alembic_version")))


async def run_alembic(engine: AsyncEngine, name: str, revision: str) -> None:
    """`alembic upgrade/downgrade REVISION` on the database, as a developer would run it."""
    async with engine.begin() as connection:
        await connection.run_sync(
            lambda sync: getattr(command, name)(migrations.alembic_config(sync), revision)
        )


def make_repo(engine: AsyncEngine, clock: FakeClock) -> MessageRepository:
    return MessageRepository(Database(engine), clock_ns=clock)


async def test_a_new_database_gets_head(engine, clock):
    await migrations.upgrade_to_head(make_repo(engine, clock).database)

    assert await version(engine) == [HEAD]
    async with engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert differences == [], "models.py and the migrations disagree on head"


async def test_upgrading_again_changes_nothing(engine, clock):
    first = await migrations.upgrade_to_head(Database(engine))
    repository = make_repo(engine, clock)
    await repository.create_message(NewMessage(author="ana", text="kept", id="m1"))

    again = await migrations.upgrade_to_head(Database(engine))

    assert (first.from_revision, first.changed) == (None, True)
    assert (again.from_revision, again.to_revision, again.changed) == (HEAD, HEAD, False)
    assert (await repository.get_message("m1")).text == "kept"


async def test_the_baseline_revision_is_the_layout_of_earlier_ackbots(engine):
    async with engine.begin() as connection:
        await connection.run_sync(LEGACY.create_all)
        legacy = await connection.run_sync(describe)
        await connection.run_sync(LEGACY.drop_all)

    await run_alembic(engine, "upgrade", migrations.BASELINE)

    async with engine.connect() as connection:
        assert await connection.run_sync(describe) == legacy


@pytest.mark.parametrize("made_by", ["create_all", "baseline migration"])
async def test_a_database_made_before_migrations_is_adopted_and_keeps_its_messages(
    engine, clock, made_by
):
    async with engine.begin() as connection:
        if made_by == "create_all":
            await connection.run_sync(LEGACY.create_all)
        else:
            await connection.run_sync(
                lambda sync: command.upgrade(migrations.alembic_config(sync), migrations.BASELINE)
            )
            await connection.execute(text("DROP TABLE alembic_version"))
        await connection.execute(
            LEGACY.tables["messages"].insert(),
            [
                legacy_row("old-1"),
                legacy_row("old-2", state="LEASED", lease_token="t", delivery_attempts=1),
                legacy_row("old-3", state="DEAD", delivery_attempts=5, last_error="boom"),
            ],
        )

    upgrade = await migrations.upgrade_to_head(Database(engine))

    assert upgrade.adopted
    assert (upgrade.from_revision, upgrade.to_revision) == (migrations.BASELINE, HEAD)
    assert await version(engine) == [HEAD]
    repository = make_repo(engine, clock)
    listed = await repository.list_messages()
    assert [(m.id, m.state.value, m.delivery_attempts) for m in listed] == [
        ("old-1", "PENDING", 0),
        ("old-2", "PENDING", 1),  # LEASED at visible_at 0: a lapsed lease shows as PENDING
        ("old-3", "DEAD", 5),
    ]
    # New messages number on from the old ones.
    created = await repository.create_message(NewMessage(author="bo", text="new"))
    assert created.message.sequence > 3


async def test_a_database_of_a_newer_ackbot_is_refused_with_its_revision(engine, clock):
    repository = make_repo(engine, clock)
    await migrations.upgrade_to_head(repository.database)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    with pytest.raises(SchemaTooNew) as refused:
        await migrations.upgrade_to_head(repository.database)

    assert "revision 9999_future" in str(refused.value)
    assert f"its newest is {HEAD}" in str(refused.value)
    assert "run that ackbot-store (or a newer one)" in str(refused.value)
    assert await version(engine) == ["9999_future"], "nothing was changed"


async def test_every_revision_goes_down_and_up_again(engine):
    await run_alembic(engine, "upgrade", "head")
    await run_alembic(engine, "downgrade", "base")

    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    assert tables == ["alembic_version"]
    await run_alembic(engine, "upgrade", "head")
    assert await version(engine) == [HEAD]


async def test_stores_starting_at_once_take_turns(engine, clock):
    # Each its own engine, as separate store processes would have.
    if engine.dialect.name == "sqlite":
        url = engine.url.render_as_string(hide_password=False)
        others = [create_engine(url) for _ in range(3)]
    else:
        async with engine.connect() as connection:
            schema = await connection.scalar(text("SELECT current_schema()"))
        settings = {"server_settings": {"search_path": str(schema)}}
        others = [create_async_engine(engine.url, connect_args=settings) for _ in range(3)]
    try:
        # Bounded: without the schema lock they may wait on each other's DDL for good.
        async with asyncio.timeout(60):
            upgrades = await asyncio.gather(
                *(migrations.upgrade_to_head(Database(e)) for e in [engine, *others])
            )
    finally:
        for other in others:
            await other.dispose()

    assert sorted(u.from_revision or "" for u in upgrades) == ["", HEAD, HEAD, HEAD]
    assert await version(engine) == [HEAD]


async def test_revision_0003_adds_conversations_to_a_0002_database_and_keeps_its_messages(
    engine, clock
):
    await run_alembic(engine, "upgrade", "0002")
    async with engine.begin() as connection:
        await connection.execute(
            LEGACY.tables["messages"].insert(),
            [legacy_row("r0002-1"), legacy_row("r0002-2", state="PROCESSED", process_time_ns=2)],
        )

    upgrade = await migrations.upgrade_to_head(Database(engine))

    assert (upgrade.from_revision, upgrade.to_revision) == ("0002", HEAD)
    repository = make_repo(engine, clock)
    listed = await repository.list_messages()
    assert [(m.id, m.state.value, m.conversation_id) for m in listed] == [
        ("r0002-1", "PENDING", None),
        ("r0002-2", "PROCESSED", None),
    ]
    await repository.create_message(
        NewMessage(author="bo", text="new", id="t1", conversation_id="c")
    )
    threaded = await repository.list_messages(conversation_id="c")
    assert [m.id for m in threaded] == ["t1"]
    async with engine.connect() as connection:
        indexes = await connection.run_sync(lambda sync: inspect(sync).get_indexes("messages"))
    assert {"ix_messages_conversation_sequence", "ix_messages_unsettled_conversation"} <= {
        index["name"] for index in indexes
    }


async def test_revision_0004_lets_a_0003_database_hold_and_delete_and_keeps_its_messages(
    engine, clock
):
    await run_alembic(engine, "upgrade", "0003")
    messages = Base.metadata.tables["messages"]
    async with engine.begin() as connection:
        await connection.execute(
            messages.insert(),
            [
                legacy_row("r3-1", conversation_id="c"),
                legacy_row("r3-2", state="PROCESSED", process_time_ns=2, conversation_id=None),
            ],
        )
        # The old constraint: no HELD state before 0004.
        with pytest.raises(IntegrityError, match=r"ck_messages_state|CHECK"):
            async with connection.begin_nested():
                await connection.execute(
                    messages.insert(), [legacy_row("x", state="HELD", conversation_id=None)]
                )

    upgrade = await migrations.upgrade_to_head(Database(engine))

    assert (upgrade.from_revision, upgrade.to_revision) == ("0003", HEAD)
    repository = make_repo(engine, clock)
    listed = await repository.list_messages()
    assert [(m.id, m.state.value, m.sequence) for m in listed] == [
        ("r3-1", "PENDING", 1),
        ("r3-2", "PROCESSED", 2),
    ]
    await repository.create_message(NewMessage(author="bo", text="new", id="h", hold=True))
    await repository.delete("r3-1")
    states = {m.id: m.state.value for m in await repository.list_messages()}
    assert states == {"r3-2": "PROCESSED", "h": "HELD"}
    async with engine.connect() as connection:
        indexes = await connection.run_sync(lambda sync: inspect(sync).get_indexes("messages"))
    assert "ix_messages_author" in {index["name"] for index in indexes}
    # The way back: tombstones go, held messages become PENDING, the old constraint returns.
    await run_alembic(engine, "downgrade", "0003")
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT id, state FROM messages"))).all()
    assert sorted(tuple(row) for row in rows) == [("h", "PENDING"), ("r3-2", "PROCESSED")]
