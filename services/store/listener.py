"""Hearing the work other stores make: PostgreSQL notifications, and a slow poll behind them.

Stores that share a PostgreSQL database announce each transaction that made work with one
notification on WORK_CHANNEL (Database.notify_work, sent by the repository). `WorkListener`
LISTENs on a connection of its own, outside the pool (Database.connect_listener), and turns a
notification from another store into `on_work()` (MessageManager.work_made_elsewhere); its own
are ignored, since the store's writes wake its streams in-process.

A LISTEN is only as good as its session, and a lost one says nothing: other job queues shipped
listeners that fell silent for good after a database restart (procrastinate #1425,
graphile-worker #541). So:

- The connection is watched two ways: asyncpg's termination callback (the server ended the
  session: pg_terminate_backend, a restart) and, every `check_seconds`, a query that must list
  our channel within `check_seconds` (a half-open TCP connection answers nothing, and no
  callback ever comes).
- A lost listener reconnects with backoff (RECONNECT_BACKOFF), and once it listens again calls
  `on_work()` once: the catch-up wake that finds whatever was made while it was deaf.
  Notifications are not replayed, so LISTEN comes first and the catch-up after it.
- The fallback poll calls `on_work()` every `poll_seconds`, listener healthy or not, so a
  notification lost in a way nobody notices costs seconds, not forever.
- Each transition is logged once (lost, back), not each retry.

The store's health stays SERVING while the listener is down: every RPC still works, its own
writes still wake its streams at once, and work from other stores still arrives, by the poll,
within `poll_seconds`. NOT_SERVING would make clients leave a store that serves, turning slower
wake-ups into an outage; a database that is really gone shows in the RPCs themselves
(UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ackbot.common.backoff import RECONNECT_BACKOFF, Backoff
from ackbot.store.database import WORK_CHANNEL, Database

log = logging.getLogger(__name__)

# How the listener's session shows in pg_stat_activity.application_name.
APPLICATION_NAME = "ackbot-store-listener"
_LISTENING_ON_CHANNEL = "SELECT $1 = ANY(ARRAY(SELECT pg_listening_channels()))"


class WorkListener:
    """Calls `on_work` when another store made work, after every (re)connect, and every
    `poll_seconds`. `connect` opens the listener's connection (by default the database's); a
    database that cannot LISTEN (a driver other than asyncpg) gets the poll alone."""

    def __init__(
        self,
        database: Database,
        store_id: str,
        on_work: Callable[[], None],
        *,
        poll_seconds: float,
        check_seconds: float,
        connect: Callable[[], Awaitable[Any]] | None = None,
        backoff: Backoff = RECONNECT_BACKOFF,
    ) -> None:
        self._store_id = store_id
        self._on_work = on_work
        self._poll_seconds = poll_seconds
        self._check_seconds = check_seconds
        self._backoff = backoff
        self._can_listen = connect is not None or database.can_listen
        self._connect = connect or (lambda: database.connect_listener(APPLICATION_NAME))
        self._connection: Any = None
        self._lost = asyncio.Event()
        self._listening = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: how many times a LISTEN was established, and notifications heard from other stores
        self.connections = 0
        self.notifications = 0

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the listener's session, while there is one."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return None
        pid: int = connection.get_server_pid()
        return pid

    async def start(self, first_listen_within: float) -> None:
        """Starts listening and polling; waits up to `first_listen_within` seconds for the
        first LISTEN, so that a store that reports SERVING hears other stores at once. A
        database that does not answer by then is retried in the background."""
        if self._can_listen:
            self._tasks.append(asyncio.create_task(self._listen(), name="work-listener"))
        else:
            log.warning(
                "cannot LISTEN with this database driver: other stores' work is found by the "
                "poll every %gs",
                self._poll_seconds,
            )
        self._tasks.append(asyncio.create_task(self._poll(), name="work-poll"))
        if self._can_listen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), first_listen_within)

    async def stop(self) -> None:
        """Stops listening and polling; safe to call twice."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._close()

    # -- listening ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        retry = 0
        lost_at: float | None = None
        while True:
            try:
                await self._open()
            # Whatever fails a connect is retried: a listener that stopped on an error nobody
            # foresaw would be the silent loss this module exists to prevent.
            except Exception as exc:
                # Once per outage: a lost listener has said so already.
                if retry == 0 and lost_at is None:
                    log.warning(
                        "cannot listen for other stores' work (%s); retrying, and polling "
                        "every %gs meanwhile",
                        exc,
                        self._poll_seconds,
                    )
                else:
                    log.debug("listener connection failed: %s", exc)
                await asyncio.sleep(self._backoff.delay(retry))  # pacing
                retry += 1
                continue
            retry = 0
            self.connections += 1
            self._listening.set()
            if lost_at is None:
                log.info(
                    "listening for other stores' work on channel %s as store %s (backend %s); "
                    "fallback poll every %gs",
                    WORK_CHANNEL,
                    self._store_id,
                    self.backend_pid,
                    self._poll_seconds,
                )
            else:
                log.info(
                    "listening for other stores' work again after %.1fs (backend %s); looking "
                    "for work made meanwhile",
                    time.monotonic() - lost_at,
                    self.backend_pid,
                )
            # The catch-up wake: LISTEN is in place, so anything made from now on is announced,
            # and anything made before is in the database for the streams to find.
            self._on_work()
            reason = await self._watch()
            self._listening.clear()
            lost_at = time.monotonic()
            log.warning(
                "stopped hearing other stores (%s); reconnecting, and polling every %gs meanwhile",
                reason,
                self._poll_seconds,
            )
            await self._close()

    async def _open(self) -> None:
        connection = await self._connect()
        self._lost.clear()
        self._connection = connection
        try:
            connection.add_termination_listener(self._on_terminated)
            await asyncio.wait_for(
                connection.add_listener(WORK_CHANNEL, self._on_notification), self._check_seconds
            )
        except BaseException:
            self._connection = None
            connection.terminate()
            raise

    async def _watch(self) -> str:
        """Returns, with the reason, once the connection is lost."""
        connection = self._connection
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._check_seconds)
                return "the database closed the connection"
            try:
                listening = await connection.fetchval(
                    _LISTENING_ON_CHANNEL, WORK_CHANNEL, timeout=self._check_seconds
                )
            except Exception as exc:  # any failure means the session cannot be trusted
                return f"check failed: {type(exc).__name__}: {exc}"
            if not listening:
                return f"the session no longer listens on {WORK_CHANNEL}"

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.is_closed():
            return
        try:
            await asyncio.wait_for(connection.close(), self._check_seconds)
        except Exception:  # a connection that cannot say goodbye is dropped
            connection.terminate()

    def _on_terminated(self, connection: Any) -> None:
        if connection is self._connection:
            self._lost.set()

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self._store_id:
            return  # our own write: it woke our streams already
        self.notifications += 1
        log.debug("work made by store %s", payload)
        self._on_work()

    # -- polling ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)  # pacing
            self._on_work()
