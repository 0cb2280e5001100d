"""Driver errors wrapped at the database boundary: what SQLAlchemy, pysqlite and asyncpg raise
becomes the store's own StorageUnavailable, StorageFull or CannotOpenDatabase, and never leaks
further up (the servicer maps those to status codes)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ackbot.store.errors import CannotOpenDatabase, StorageFull, StorageUnavailable

log = logging.getLogger(__name__)

# The errors one write can cause for a whole transaction (a unique constraint that another store
# process won). They pass through untranslated, so that group commit can run the transaction's
# writes again one by one.
CONFLICT_ERRORS: tuple[type[Exception], ...] = (IntegrityError,)
# What may fail opening the first connection: the driver's errors, the pool's wait, the socket.
OPEN_ERRORS = (OperationalError, DBAPIError, PoolTimeoutError, OSError, TimeoutError)


@contextlib.asynccontextmanager
async def translate_errors(*, disk_full_is_storage_full: bool) -> AsyncIterator[None]:
    """Turns driver errors into StorageUnavailable or StorageFull (CONFLICT_ERRORS pass).
    With `disk_full_is_storage_full` (SQLite), a driver error that says "full" is StorageFull."""
    try:
        yield
    except CONFLICT_ERRORS:
        raise
    except (OperationalError, DBAPIError) as exc:
        detail = str(exc.orig) if exc.orig is not None else str(exc)
        if "full" in detail.lower() and disk_full_is_storage_full:
            log.error("database is full: %s", detail)
            raise StorageFull(f"database is full: {detail}") from exc
        log.warning("database error: %s", detail)
        raise StorageUnavailable(f"database unavailable: {detail}") from exc
    except (PoolTimeoutError, OSError, TimeoutError) as exc:
        log.warning("database unreachable: %s", exc)
        raise StorageUnavailable(f"database unreachable: {exc}") from exc


def cannot_open(url: str, exc: BaseException) -> CannotOpenDatabase:
    """The one line for the operator when the database `url` cannot be opened (one of
    OPEN_ERRORS): the driver's own words, no driver log on the way."""
    orig = getattr(exc, "orig", None)
    why = str(orig if orig is not None else exc).strip() or type(exc).__name__
    return CannotOpenDatabase(f"cannot open the database {url}: {why}")
