"""Schema migrations (Alembic) for SQLite and PostgreSQL alike, run by the store on start
(unless --no-migrate) and by `ackbot-store migrate` (see ackbot.store.migrate).

`upgrade_to_head` brings a database to the schema this ackbot expects, inside
`Database.schema_change` (one store at a time). What it finds decides what it does:
- a new database: every revision runs;
- a database made before ackbot had migrations (a messages table, no alembic_version): it is
  the baseline (revision 0001), stamped so, then upgraded; ackbot 0.1's layout, keyed by id, is
  refused with what to do;
- a database at a revision this ackbot does not know: a newer ackbot made it; refused with one
  line that names the revision (SchemaTooNew), since running old code on it could undo what
  the newer code counts on.

No alembic.ini: the revisions are in versions/ next to this file, and env.py runs them on the
store's own connection. services/store/models.py describes head; tests/store/test_migrations.py
checks that the two agree. A new revision is a new file in versions/, written like the newest
one, whose `down_revision` names it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from ackbot.store.database import Database
from ackbot.store.errors import SchemaTooNew, StorageUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent
# The schema of every ackbot made before migrations (see versions/r0001_baseline.py).
BASELINE = "0001"


@dataclass(frozen=True)
class SchemaUpgrade:
    """What `upgrade_to_head` did: from which revision (None: a new database) to which."""

    from_revision: str | None
    to_revision: str
    adopted: bool  # made before migrations, and stamped as the baseline

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


def script_directory() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


def alembic_config(connection: Connection) -> Config:
    """An Alembic config whose env.py runs on `connection` (for `alembic.command`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def upgrade_to_head(database: Database) -> SchemaUpgrade:
    """Brings the database to this ackbot's schema; stores starting at once take turns."""
    async with database.schema_change() as connection:
        upgrade = await connection.run_sync(_upgrade_to_head)
    if upgrade.adopted:
        log.info("database made before schema migrations: recorded as revision %s", BASELINE)
    if upgrade.changed:
        log.info(
            "database schema upgraded from revision %s to %s",
            upgrade.from_revision or "(none: a new database)",
            upgrade.to_revision,
        )
    return upgrade


def _upgrade_to_head(connection: Connection) -> SchemaUpgrade:
    script = script_directory()
    head = script.get_current_head()
    assert head is not None  # versions/ is never empty
    current = MigrationContext.configure(connection).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise SchemaTooNew(
            f"the database schema is at revision {', '.join(unknown)}, which this ackbot does "
            f"not know (its newest is {head}): a newer ackbot made it; run that ackbot-store "
            "(or a newer one) on it"
        )
    adopted = False
    if not current and inspect(connection).has_table("messages"):
        _refuse_id_keyed_layout(connection)
        MigrationContext.configure(connection).stamp(script, BASELINE)
        current = (BASELINE,)
        adopted = True
    if current != (head,):
        command.upgrade(alembic_config(connection), "head")
    return SchemaUpgrade(current[0] if current else None, head, adopted)


def _refuse_id_keyed_layout(connection: Connection) -> None:
    primary_key = inspect(connection).get_pk_constraint("messages")
    if primary_key["constrained_columns"] != ["sequence"]:
        # ackbot 0.1's first layout keyed the table by id, and no migration leads from it.
        raise StorageUnavailable(
            "the database was made by an older ackbot (messages keyed by id, not by "
            "sequence); move it aside and start with a new one"
        )


class SchemaNotCurrent(StorageUnavailable):
    """A store started with --no-migrate found the schema behind (or ahead of) its own."""


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None  # versions/ is never empty
    return head


def known_revision(revision: str) -> str:
    """`revision` if it names one ("head" and "base" too), else ValueError naming the known."""
    if revision in ("head", "base"):
        return revision
    known = [item.revision for item in script_directory().walk_revisions()]
    if revision not in known:
        raise ValueError(f"no revision {revision!r}: the known are {', '.join(reversed(known))}")
    return revision


async def current_revision(database: Database) -> str | None:
    """The revision the database's schema is at (None: no ackbot schema yet)."""
    async with database.schema_change() as connection:
        return await connection.run_sync(_current)


def _current(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None


async def check_current(database: Database) -> None:
    """For a store that does not migrate: the schema must be this ackbot's head already."""
    current, head = await current_revision(database), head_revision()
    if current != head:
        raise SchemaNotCurrent(
            f"the database schema is at revision {current or '(none: a new database)'}, and "
            f"this ackbot needs {head}; run `ackbot-store migrate upgrade` first, or start "
            "without --no-migrate"
        )


async def downgrade(database: Database, revision: str) -> tuple[str | None, str | None]:
    """Takes the schema down to `revision` ("base": no tables); returns (from, to)."""
    async with database.schema_change() as connection:
        before = await connection.run_sync(_current)
        await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))
        after = await connection.run_sync(_current)
    log.info("database schema downgraded from revision %s to %s", before, after or "base")
    return before, after


async def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Brings the schema up to `revision` (head: what upgrade_to_head does on start)."""
    if revision == "head":
        done = await upgrade_to_head(database)
        return done.from_revision, done.to_revision
    async with database.schema_change() as connection:
        before = await connection.run_sync(_current)
        await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
        after = await connection.run_sync(_current)
    log.info("database schema upgraded from revision %s to %s", before, after)
    return before, after
