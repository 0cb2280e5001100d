"""The stores table: the registry of stores serving a shared PostgreSQL database (registry.py
decides when to call these, and what the answers mean).

A store registers on a dedicated session and heartbeats on it; another store finds it dead when
its heartbeat is old or its session is gone, and hands its leases back (leases.py) in the
transaction that deletes its registration.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    Interval,
    Row,
    bindparam,
    column,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from ackbot.store.models import UNSETTLED
from ackbot.store.tables.leases import LEASED, LeasesTable
from ackbot.store.tables.transaction import MESSAGES, STORES, Transaction
from ackbot.store.types import Cause, DeadStore, Reaped, ReleasedLease

# The database's clock, read when the statement runs (now() would be the transaction's start).
_DB_NOW = func.clock_timestamp()
_ACTIVITY = table(
    "pg_stat_activity", column("pid", Integer), column("backend_start", DateTime(timezone=True))
)
# The backend of the session that runs the statement, as pg_stat_activity knows it.
_OWN_BACKEND = {
    "backend_pid": func.pg_backend_pid(),
    "backend_start": select(_ACTIVITY.c.backend_start)
    .where(_ACTIVITY.c.pid == func.pg_backend_pid())
    .scalar_subquery(),
}
# que's check: the store's registered session is gone when no backend has its pid AND its start
# (a pid is reused). Another role's backend_start reads as NULL without pg_read_all_stats: then
# the pid alone has to do.
_SESSION_GONE = ~exists().where(
    _ACTIVITY.c.pid == STORES.c.backend_pid,
    or_(
        _ACTIVITY.c.backend_start == STORES.c.backend_start,
        _ACTIVITY.c.backend_start.is_(None),
        STORES.c.backend_start.is_(None),
    ),
)
_SILENT = _DB_NOW - STORES.c.heartbeat_at
_DEAD_STORES = select(
    STORES.c.id,
    STORES.c.listen_address,
    func.extract("epoch", _SILENT).label("silent_seconds"),
    _SESSION_GONE.label("session_gone"),
).where(
    STORES.c.id != bindparam("me"),
    or_(
        STORES.c.heartbeat_at < _DB_NOW - bindparam("dead_after", type_=Interval),
        _SESSION_GONE,
    ),
    # Nobody is judged until the database has been up that long: a restart ends every
    # session, and the stores need a moment to reconnect and heartbeat again.
    func.pg_postmaster_start_time() < _DB_NOW - bindparam("dead_after", type_=Interval),
)
# Stores that hold leases but are not registered: one declared dead that leased on before it
# noticed, then died too, or one whose registration an operator deleted. Nobody else hands
# their leases back before they expire. (Every store registers before it leases anything.)
_UNREGISTERED_OWNERS = (
    select(MESSAGES.c.owner_store)
    .distinct()
    .where(
        LEASED,
        MESSAGES.c.owner_store.is_not(None),
        ~exists().where(STORES.c.id == MESSAGES.c.owner_store),
    )
)


def _dead_store(row: Row[Any]) -> DeadStore:
    return DeadStore(row.id, row.listen_address, float(row.silent_seconds), row.session_gone)


def _unregistered(store_id: str) -> DeadStore:
    return DeadStore(store_id, "", 0.0, session_gone=False, registered=False)


class StoresTable:
    def __init__(self, *, store_id: str, leases: LeasesTable) -> None:
        self._store_id = store_id
        self._leases = leases

    async def register_store(self, session: AsyncConnection, listen_address: str) -> None:
        """Registers this store, its heartbeat now, on `session` (in a transaction the caller
        opened)."""
        await session.execute(
            insert(STORES).values(
                id=self._store_id,
                listen_address=listen_address,
                started_at=_DB_NOW,
                heartbeat_at=_DB_NOW,
                **_OWN_BACKEND,
            )
        )

    async def heartbeat(self, session: AsyncConnection, *, new_session: bool = False) -> bool:
        """Stamps this store's heartbeat (in a transaction the caller opened); False when its
        registration is gone. After a reconnect (`new_session`), `session` is the one to check."""
        values: dict[str, Any] = {"heartbeat_at": _DB_NOW}
        if new_session:
            values.update(_OWN_BACKEND)
        beat = await session.scalar(
            update(STORES)
            .where(STORES.c.id == self._store_id)
            .values(values)
            .returning(STORES.c.id)
        )
        return beat is not None

    def find_dead_stores(
        self, connection: Connection, dead_after_seconds: float
    ) -> list[DeadStore]:
        rows = connection.execute(_DEAD_STORES, self._dead_params(dead_after_seconds))
        unregistered = connection.scalars(_UNREGISTERED_OWNERS)
        return [_dead_store(row) for row in rows] + [_unregistered(s) for s in unregistered]

    def reap(self, tx: Transaction, dead_after_seconds: float) -> list[Reaped]:
        dead = (
            tx.connection.execute(
                _DEAD_STORES.with_for_update(skip_locked=True, of=STORES),
                self._dead_params(dead_after_seconds),
            )
        ).all()
        unregistered = list(tx.connection.scalars(_UNREGISTERED_OWNERS))
        reaped = []
        for store in [_dead_store(row) for row in dead] + [_unregistered(s) for s in unregistered]:
            owned = MESSAGES.c.owner_store == store.id
            unlocked = (
                select(MESSAGES.c.sequence)
                .where(UNSETTLED, LEASED, owned)
                .with_for_update(skip_locked=True)
            )
            released = self._leases.hand_back(
                tx, Cause.STORE_DIED, owned, MESSAGES.c.sequence.in_(unlocked)
            )
            reaped.append(Reaped(store, released))
        finished: set[str] = set()
        if dead:
            still_held = exists().where(UNSETTLED, LEASED, MESSAGES.c.owner_store == STORES.c.id)
            deleted = tx.connection.scalars(
                delete(STORES)
                .where(STORES.c.id.in_([row.id for row in dead]), ~still_held)
                .returning(STORES.c.id)
            )
            finished.update(deleted)
        return [
            dataclasses.replace(r, finished=r.store.id in finished or not r.store.registered)
            for r in reaped
        ]

    def deregister(self, tx: Transaction, store_id: str) -> list[ReleasedLease]:
        released = self._leases.hand_back(
            tx, Cause.STORE_STOPPED, UNSETTLED, MESSAGES.c.owner_store == store_id
        )
        tx.connection.execute(delete(STORES).where(STORES.c.id == store_id))
        return released

    def _dead_params(self, dead_after_seconds: float) -> dict[str, Any]:
        return {"me": self._store_id, "dead_after": timedelta(seconds=dead_after_seconds)}
