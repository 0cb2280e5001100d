"""A PostgreSQL database of the run's own, as the tests make theirs (tests/support/postgres.py):
created empty on the server the given URL names, dropped after the run, sessions and all. The
stores create their tables in it themselves (their migrations), as on a real first start."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "ACKBOT_TEST_POSTGRES_URL"


def asyncpg_dsn(url: str) -> str:
    """The plain libpq DSN of a SQLAlchemy URL, for a raw asyncpg connection."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str = "ackbot_chaos") -> AsyncIterator[str]:
    """Yields the SQLAlchemy URL of a new, empty database on `server_url`'s server."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
