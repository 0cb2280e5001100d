"""A PostgreSQL database of a test's own, on the server named by ACKBOT_TEST_POSTGRES_URL. A test
that needs one carries the `postgres` marker; whether it runs, skips or fails without a server
is decided in tests/conftest.py, once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "ACKBOT_TEST_POSTGRES_URL"


def asyncpg_dsn(url: str) -> str:
    """The plain libpq DSN of a SQLAlchemy URL, for a raw asyncpg connection."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "ackbot_it") -> AsyncIterator[str]:
    """A new, empty database; yields its SQLAlchemy URL and drops it after, sessions and all."""
    base = make_url(os.environ[POSTGRES_URL_ENV])
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(asyncpg_dsn(os.environ[POSTGRES_URL_ENV]))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _as_admin(statement: str) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(os.environ[POSTGRES_URL_ENV]))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def _run_apart(statement: str) -> None:
    # On a loop of its own, in a thread: a session fixture may be set up from inside a test's
    # running loop, where asyncio.run is refused.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _as_admin(statement)).result()


@contextlib.contextmanager
def process_database(prefix: str = "ackbot_unit") -> Iterator[str]:
    """fresh_database for a whole test process (a session fixture, no event loop needed).

    For tests that share one database and keep apart by schema: work notifications (NOTIFY)
    reach every listener of a database whatever its schema, so test processes running side by
    side (pytest-xdist workers, or another checkout's run on the same server) must not share
    one, or a test hears another's stores."""
    base = make_url(os.environ[POSTGRES_URL_ENV])
    name = f"{prefix}_{secrets.token_hex(4)}"
    _run_apart(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        _run_apart(f'DROP DATABASE "{name}" WITH (FORCE)')
