"""Alembic's environment: runs the migrations on the connection the store hands over.

The store calls this through `ackbot.store.migrations.upgrade_to_head`, inside a transaction
that already holds the schema lock (Database.schema_change), so there is no URL, no alembic.ini
and no transaction of its own here; Alembic commits nothing, the store's transaction does.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from ackbot.store.models import Base


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise RuntimeError(
            "ackbot's migrations run inside ackbot-store, which upgrades its database on "
            "start (ackbot.store.migrations.upgrade_to_head)"
        )
    # target_metadata: what head must look like, for autogenerate and for the tests.
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
