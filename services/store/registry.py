"""Stores sharing a PostgreSQL database watch each other, so that a dead store's leases come back
within seconds instead of at lease expiry (a minute by default).

Each store registers itself (a row in `stores`) and heartbeats about every `heartbeat_seconds`
on a database session of its own, outside the pool: a busy pool never delays a heartbeat, and
the session itself is evidence of life. Every lease records the store that granted it
(`messages.owner_store`). Every store also runs a reaper, about as often, jittered so that the
stores do not all look at once. A store is dead when either is true:

- its heartbeat is older than `dead_after_seconds`, by the database's clock (never a store's:
  machines may disagree about the time): a store that hangs, or lost the database;
- its registered session is gone (que's check, on pid and backend start, since pids are
  reused): a store killed outright, whose session PostgreSQL closes within milliseconds, so
  a `kill -9` is noticed at the next reap, not after `dead_after_seconds`.

Declaring a registered store dead ends its database sessions first (`pg_terminate_backend` of every
backend named after it, `ackbot-store:<id>`, see Database's SessionBounds): a store stopped
inside a transaction holds the insert turn and row locks that every other store's writes wait
for, and nothing but the end of its session releases them. A dead store's sessions are of no
use to anyone; should it wake, it finds its registration gone and stops anyway. The server
ends an idle transaction by itself too (idle_in_transaction_session_timeout), but only the
dead store's own setting decides when, and a statement it left running is not idle. Ending
another role's sessions needs that role or pg_signal_backend; without it the reaper says so
and goes on, and the bounds alone free the locks.

Reaping hands the dead store's leases back the way a stream's end does (attempt still counted,
DEAD after the last), deletes its row, and wakes this store's streams. Leases whose store is
not registered at all (it was declared dead, leased on before it noticed, then died) go back
the same way. Row locks (SKIP LOCKED)
keep two reapers from handling one store. River's and Oban's rescuers wait an hour and may run
a job twice; procrastinate leaves stalled jobs to the user; graphile-worker's free edition waits
four hours. Here a message is at worst delivered once more, and still answered once.

A store that finds its own registration gone was declared dead (it stalled, or lost the
database for longer than `dead_after_seconds`), and its leases may be with other stores by now:
it stops serving instead of acting on them (`on_declared_dead`). The same happens to a store
whose own session breaks (a network blip, `pg_terminate_backend`) if another store reaps it
before it has reconnected: to the others it looks killed. A supervisor starts it again.

After the database restarts every registered session is gone, and after it was unreachable
every heartbeat is old: the first store back must give the others time to reconnect and
heartbeat before it judges them. So nobody is declared dead while the database has been up for
less than `dead_after_seconds`, and a store whose own session had to be made again waits as long
before it judges anyone. A store that has just started judges at once: the usual reason a store
starts is that one died.

The reap runs in a transaction of its own, beside group commit's queue: the writes queued there
may be waiting for the locks of the very store it is about to declare dead.

The SQL is the repository's, except ending sessions (here); this room decides when, and what
it means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from ackbot.store.database import Database
from ackbot.store.errors import StoreError
from ackbot.store.repository import MessageRepository
from ackbot.store.session_bounds import STORE_APPLICATION_PREFIX, store_application_name
from ackbot.store.types import DeadStore, Reaped, ReleasedLease

log = logging.getLogger(__name__)

# How long ending one session may wait for its backend to exit (and release its locks), so
# that the reap that follows finds the dead store's leases unlocked.
END_SESSION_WAIT_MS = 1000
# Every backend of the named stores on this database, but the caller's own.
_END_SESSIONS = text(
    "SELECT application_name, pid, pg_terminate_backend(pid, :wait_ms) AS ended "
    "FROM pg_stat_activity "
    "WHERE application_name = ANY(:names) AND datname = current_database() "
    "AND pid <> pg_backend_pid()"
).bindparams(bindparam("names", type_=ARRAY(String)))


class StoreRegistry:
    """This store's registration, heartbeat and reaper. `start()` registers (before the store
    serves, so that every lease it grants has a registered owner); `stop()` is safe twice."""

    def __init__(
        self,
        database: Database,
        repository: MessageRepository,
        *,
        listen_address: str,
        heartbeat_seconds: float,
        dead_after_seconds: float,
        on_work_made: Callable[[], None],
        on_declared_dead: Callable[[], None],
        on_reaped: Callable[[list[ReleasedLease]], None] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        assert repository.store_id is not None, "the repository records no owner on its leases"
        self.store_id = repository.store_id
        self._database = database
        self._repository = repository
        self._listen_address = listen_address
        self._heartbeat_seconds = heartbeat_seconds
        self._dead_after_seconds = dead_after_seconds
        self._on_work_made = on_work_made
        self._on_declared_dead = on_declared_dead
        # Told of the leases of a dead store that this store's reaper handed back.
        self._on_reaped = on_reaped
        self._jitter = jitter
        self._session: contextlib.AsyncExitStack | None = None
        self._connection: AsyncConnection | None = None
        # Loop time before which this store judges nobody (set when its session is made again).
        self._judge_after = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self.declared_dead = False

    async def start(self) -> None:
        connection = await self._open_session()
        await self._repository.register_store(connection, self._listen_address)
        log.info(
            "registered store=%s heartbeat=%gs dead_after=%gs",
            self.store_id,
            self._heartbeat_seconds,
            self._dead_after_seconds,
        )
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="store-heartbeat"),
            asyncio.create_task(self._reaper(), name="store-reaper"),
        ]

    async def stop(self) -> None:
        """Stops watching, hands back the leases this store still holds, and deletes its
        registration (its streams have ended by now, so only leftovers remain)."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            released = await self._repository.deregister_store()
        except StoreError as exc:
            # Its session closes below: the other stores hand its leases back at their next reap.
            log.warning("could not deregister store=%s: %s", self.store_id, exc)
        else:
            for lease in released:
                log.info(
                    "lease released on store stop message_id=%s store=%s",
                    lease.message_id,
                    self.store_id,
                )
            log.info("deregistered store=%s released=%d", self.store_id, len(released))
            if released:
                self._on_work_made()
        await self._close_session()

    # -- heartbeat ------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        new_session = False
        failing = False
        while True:
            await asyncio.sleep(self._heartbeat_seconds)  # pacing
            try:
                connection = self._connection
                if connection is None:
                    connection = await self._open_session()
                    new_session = True
                    loop = asyncio.get_running_loop()
                    self._judge_after = loop.time() + self._dead_after_seconds
                alive = await self._repository.heartbeat(connection, new_session=new_session)
            except StoreError as exc:
                if not failing:
                    log.warning("heartbeat failed store=%s: %s", self.store_id, exc)
                failing = True
                # A fresh session next time; its backend is recorded with the first heartbeat.
                await self._close_session()
                continue
            if failing:
                log.info("heartbeat back store=%s", self.store_id)
            failing = new_session = False
            if not alive:
                self.declared_dead = True
                log.error(
                    "store=%s was declared dead by another store (its registration is gone): "
                    "stopping, since its leases may be with other stores by now",
                    self.store_id,
                )
                self._on_declared_dead()
                return

    async def _open_session(self) -> AsyncConnection:
        session = contextlib.AsyncExitStack()
        self._connection = await session.enter_async_context(self._database.dedicated_connection())
        self._session = session
        return self._connection

    async def _close_session(self) -> None:
        session, self._session, self._connection = self._session, None, None
        if session is not None:
            # A broken session may fail to close cleanly; it is gone either way.
            with contextlib.suppress(Exception):
                await session.aclose()

    # -- reaper ---------------------------------------------------------------------------------

    async def _reaper(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Jittered between half and one and a half heartbeats, so that the stores'
            # reapers spread out.
            await asyncio.sleep(self._heartbeat_seconds * (0.5 + self._jitter()))  # pacing
            if self.declared_dead:
                return  # it is stopping, and judges nobody any more
            if self._connection is None:
                continue  # this store cannot reach the database itself: it judges nobody
            if loop.time() < self._judge_after:
                continue  # the others may still be reconnecting (see the module docstring)
            try:
                looks_dead = await self._repository.find_dead_stores(self._dead_after_seconds)
                if not looks_dead:
                    continue
                await self._end_sessions(looks_dead)
                reaped = await self._repository.reap_dead_stores(self._dead_after_seconds)
            except StoreError as exc:
                log.warning("reaper failed store=%s: %s", self.store_id, exc)
                continue
            # Why each looked dead before its sessions were ended (after, every one's session
            # is gone, which would hide a silence).
            judged = {store.id: store for store in looks_dead}
            for dead in reaped:
                self._log_reaped(dead, judged.get(dead.store.id, dead.store))
                if self._on_reaped is not None and dead.released:
                    self._on_reaped(dead.released)
            if any(dead.released for dead in reaped):
                self._on_work_made()

    async def _end_sessions(self, dead: list[DeadStore]) -> None:
        """Ends every database session of the `dead` stores (see the module docstring). A
        failure (no permission, the database gone) is logged: the reap goes on without it."""
        # Registered ones only: a store that holds leases unregistered was declared dead
        # before, its sessions ended then, and is stopping by itself (handing back what it
        # holds, which its sessions must stay to do); its leases are handed back regardless.
        names = [
            store_application_name(store.id)
            for store in dead
            if store.registered and store.id != self.store_id
        ]
        if not names:
            return
        try:
            async with self._database.connect() as connection:
                rows = (
                    await connection.execute(
                        _END_SESSIONS, {"names": names, "wait_ms": END_SESSION_WAIT_MS}
                    )
                ).all()
        except StoreError as exc:
            log.warning("could not end the database sessions of dead stores %s: %s", names, exc)
            return
        for row in rows:
            dead_id = row.application_name.removeprefix(STORE_APPLICATION_PREFIX)
            log.warning(
                "ended database session pid=%d of dead store=%s%s",
                row.pid,
                dead_id,
                "" if row.ended else " (it has not exited yet)",
            )

    def _log_reaped(self, reaped: Reaped, judged: DeadStore) -> None:
        dead = reaped.store
        if not reaped.released and not reaped.finished:
            # Its leases are all locked (it stalled inside a transaction): said once a reap.
            log.debug("store=%s looks dead, its leases are locked", dead.id)
            return
        if not dead.registered:
            why = "it holds leases but is not registered (declared dead before)"
        elif judged.session_gone:
            why = "its database session is gone"
        else:
            why = f"no heartbeat for {judged.silent_seconds:.1f}s"
        for lease in reaped.released:
            log.info(
                "lease of a dead store released message_id=%s state=%s attempts=%d store=%s",
                lease.message_id,
                lease.state.value,
                lease.delivery_attempts,
                dead.id,
            )
        log.warning(
            "store=%s (%s) is dead: %s; released %d of its leases%s",
            dead.id,
            dead.listen_address or "-",
            why,
            len(reaped.released),
            "" if reaped.finished else " (some are locked; the next reap goes on)",
        )
