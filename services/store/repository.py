"""All SQL and every transaction of the store. Callers get plain dataclasses back.

One `async with` transaction per operation. Dialect differences live here and only here:
- SQLite allows one writer at a time. Writes in this process take an asyncio lock first, so they
  queue in the event loop instead of spinning in SQLite's busy handler; `busy_timeout` bounds
  the wait on another process. The sequence is MAX(sequence) + 1, safe because writes are
  serialized.
- PostgreSQL has concurrent writers: claims use FOR UPDATE SKIP LOCKED so two stores never hand
  out the same row, settling locks the row with FOR UPDATE, and the sequence is a SEQUENCE.
Driver errors are wrapped at this boundary (StorageUnavailable / StorageFull) and never leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Sequence as DbSequence
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import aliased

from ackbot.store.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    StorageFull,
    StorageUnavailable,
)
from ackbot.store.ids import new_lease_token, new_message_id
from ackbot.store.models import UNSETTLED, Base, MessageRow, State

log = logging.getLogger(__name__)

SEQUENCE = DbSequence("messages_sequence_seq")
DEAD_BY_ATTEMPTS = "delivered {attempts} times without being processed"
_WRITE_OPTION = "ackbot_write"


@dataclass(frozen=True)
class StoredMessage:
    id: str
    sequence: int
    author: str
    text: str
    create_time_ns: int | None
    receive_time_ns: int
    state: State
    reply_to: str | None
    reply_id: str | None
    delivery_attempts: int
    last_error: str | None
    lease_expire_ns: int | None
    process_time_ns: int | None


@dataclass(frozen=True)
class NewMessage:
    author: str
    text: str
    id: str = ""
    create_time_ns: int | None = None


@dataclass(frozen=True)
class CreateResult:
    message: StoredMessage
    already_existed: bool


@dataclass(frozen=True)
class MarkResult:
    message: StoredMessage
    reply: StoredMessage | None
    already_processed: bool


@dataclass(frozen=True)
class Delivery:
    message: StoredMessage
    lease_token: str
    lease_expire_ns: int


@dataclass(frozen=True)
class Lease:
    message_id: str
    lease_token: str


def create_engine(url: str, *, lock_timeout_seconds: float = 5.0) -> AsyncEngine:
    """Makes the engine for `url`, with SQLite set up for WAL and real transactions."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            # The default ./data/ackbot.db must work on a fresh checkout.
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        _configure_sqlite(engine.sync_engine, lock_timeout_seconds)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine, lock_timeout_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: object, _record: object) -> None:
        # The driver's own transaction handling does not BEGIN before a SELECT, so a read
        # followed by a write would not be one transaction; take over and BEGIN ourselves.
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        # WAL: readers never block the writer. synchronous=FULL: every commit is fsynced before
        # CreateMessage or MarkProcessed returns, so acknowledged writes survive a kill -9 and
        # a power cut alike.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout_seconds * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        # A write transaction takes the write lock up front: a deferred one that reads first
        # fails at once with "database is locked" (no busy wait) when another connection has
        # committed in between.
        writes = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _to_stored(row: MessageRow, reply_id: str | None, now_ns: int) -> StoredMessage:
    state = State(row.state)
    lease_expire_ns: int | None = None
    if state is State.LEASED:
        if row.visible_at_ns <= now_ns:
            # The lease has lapsed; the row is only waiting for its next claim.
            state = State.PENDING
        else:
            lease_expire_ns = row.visible_at_ns
    return StoredMessage(
        id=row.id,
        sequence=row.sequence,
        author=row.author,
        text=row.text,
        create_time_ns=row.create_time_ns,
        receive_time_ns=row.receive_time_ns,
        state=state,
        reply_to=row.reply_to,
        reply_id=reply_id,
        delivery_attempts=row.delivery_attempts,
        last_error=row.last_error,
        lease_expire_ns=lease_expire_ns,
        process_time_ns=row.process_time_ns,
    )


class MessageRepository:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_attempts: int = 5,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._max_attempts = max_attempts
        self._now_ns = clock_ns
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._sqlite_write_lock = asyncio.Lock()

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    async def create_schema(self) -> None:
        async with self._translate_errors(), self._engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            if not self._is_sqlite:
                await connection.run_sync(SEQUENCE.create, checkfirst=True)

    async def dispose(self) -> None:
        await self._engine.dispose()

    # -- sessions ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _translate_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError) as exc:
            detail = str(exc.orig) if exc.orig is not None else str(exc)
            if "full" in detail.lower() and self._is_sqlite:
                log.error("database is full: %s", detail)
                raise StorageFull(f"database is full: {detail}") from exc
            log.warning("database error: %s", detail)
            raise StorageUnavailable(f"database unavailable: {detail}") from exc
        except (PoolTimeoutError, OSError, TimeoutError) as exc:
            log.warning("database unreachable: %s", exc)
            raise StorageUnavailable(f"database unreachable: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._translate_errors(), self._sessions.begin() as session:
            yield session

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        lock = self._sqlite_write_lock if self._is_sqlite else contextlib.nullcontext()
        async with lock, self._translate_errors(), self._sessions.begin() as session:
            await session.connection(execution_options={_WRITE_OPTION: True})
            yield session

    async def _next_sequence(self, session: AsyncSession) -> int:
        if self._is_sqlite:
            current = await session.scalar(select(func.max(MessageRow.sequence)))
            return (current or 0) + 1
        return int(await session.scalar(SEQUENCE.next_value()))

    async def _lock_row(self, session: AsyncSession, message_id: str) -> MessageRow:
        row = await session.scalar(
            select(MessageRow).where(MessageRow.id == message_id).with_for_update()
        )
        if row is None:
            raise NotFound(message_id)
        return row

    async def _reply_id(self, session: AsyncSession, message_id: str) -> str | None:
        return await session.scalar(select(MessageRow.id).where(MessageRow.reply_to == message_id))

    # -- creating and reading ---------------------------------------------------------------

    async def create_message(self, new: NewMessage) -> CreateResult:
        message_id = new.id or new_message_id()
        try:
            async with self._write() as session:
                existing = await session.get(MessageRow, message_id)
                if existing is not None:
                    return await self._existing_create(session, existing, new)
                now = self._now_ns()
                row = MessageRow(
                    id=message_id,
                    sequence=await self._next_sequence(session),
                    author=new.author,
                    text=new.text,
                    create_time_ns=new.create_time_ns,
                    receive_time_ns=now,
                    state=State.PENDING,
                    delivery_attempts=0,
                    visible_at_ns=0,
                )
                session.add(row)
                await session.flush()
                return CreateResult(_to_stored(row, None, now), already_existed=False)
        except IntegrityError:
            # Another store process inserted the same id between our read and our insert.
            async with self._read() as session:
                existing = await session.get(MessageRow, message_id)
                if existing is None:
                    raise
                return await self._existing_create(session, existing, new)

    async def _existing_create(
        self, session: AsyncSession, existing: MessageRow, new: NewMessage
    ) -> CreateResult:
        if existing.author != new.author or existing.text != new.text:
            raise AlreadyExists(existing.id)
        reply_id = await self._reply_id(session, existing.id)
        return CreateResult(_to_stored(existing, reply_id, self._now_ns()), already_existed=True)

    async def get_message(self, message_id: str) -> StoredMessage:
        async with self._read() as session:
            row = await session.get(MessageRow, message_id)
            if row is None:
                raise NotFound(message_id)
            return _to_stored(row, await self._reply_id(session, message_id), self._now_ns())

    async def list_messages(
        self,
        *,
        after_sequence: int = 0,
        before_sequence: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
        state: State | None = None,
        reply_to: str | None = None,
    ) -> list[StoredMessage]:
        reply = aliased(MessageRow)
        order = MessageRow.sequence.desc() if newest_first else MessageRow.sequence
        query = (
            select(MessageRow, reply.id)
            .outerjoin(reply, reply.reply_to == MessageRow.id)
            .where(MessageRow.sequence > after_sequence)
            .order_by(order)
            .limit(limit)
        )
        if before_sequence is not None:
            query = query.where(MessageRow.sequence < before_sequence)
        now = self._now_ns()
        if reply_to is not None:
            query = query.where(MessageRow.reply_to == reply_to)
        # LEASED rows whose lease lapsed are shown (and filtered) as PENDING.
        if state is State.PENDING:
            query = query.where(
                (MessageRow.state == State.PENDING)
                | ((MessageRow.state == State.LEASED) & (MessageRow.visible_at_ns <= now))
            )
        elif state is State.LEASED:
            query = query.where(
                (MessageRow.state == State.LEASED) & (MessageRow.visible_at_ns > now)
            )
        elif state is not None:
            query = query.where(MessageRow.state == state)
        async with self._read() as session:
            rows = (await session.execute(query)).all()
            return [_to_stored(row, reply_id, now) for row, reply_id in rows]

    # -- settling ---------------------------------------------------------------------------

    async def mark_processed(
        self, message_id: str, reply: NewMessage | None, lease_token: str = ""
    ) -> MarkResult:
        try:
            async with self._write() as session:
                row = await self._lock_row(session, message_id)
                now = self._now_ns()
                if row.state == State.PROCESSED:
                    return await self._already_processed(session, row, now)
                if lease_token and lease_token != row.lease_token:
                    # Not an error: the first reply to commit wins, whoever holds the lease.
                    log.info("processing with a stale lease token message_id=%s", message_id)
                stored_reply: StoredMessage | None = None
                if reply is not None:
                    reply_row = MessageRow(
                        id=new_message_id(now),
                        sequence=await self._next_sequence(session),
                        author=reply.author,
                        text=reply.text,
                        create_time_ns=now,
                        receive_time_ns=now,
                        state=State.PROCESSED,
                        reply_to=message_id,
                        delivery_attempts=0,
                        visible_at_ns=0,
                        process_time_ns=now,
                    )
                    session.add(reply_row)
                    stored_reply = _to_stored(reply_row, None, now)
                row.state = State.PROCESSED
                row.process_time_ns = now
                row.lease_token = None
                await session.flush()
                reply_id = stored_reply.id if stored_reply else None
                return MarkResult(_to_stored(row, reply_id, now), stored_reply, False)
        except IntegrityError:
            # A concurrent MarkProcessed committed its reply first (the unique reply_to).
            async with self._read() as session:
                winner = await session.get(MessageRow, message_id)
                if winner is None or winner.state != State.PROCESSED:
                    raise
                return await self._already_processed(session, winner, self._now_ns())

    async def _already_processed(
        self, session: AsyncSession, row: MessageRow, now: int
    ) -> MarkResult:
        reply_row = await session.scalar(select(MessageRow).where(MessageRow.reply_to == row.id))
        reply = _to_stored(reply_row, None, now) if reply_row else None
        message = _to_stored(row, reply.id if reply else None, now)
        return MarkResult(message, reply, already_processed=True)

    async def claim(self, limit: int, lease_ns: int) -> list[Delivery]:
        """Leases up to `limit` deliverable messages, oldest first.

        Every claim counts an attempt. A message already delivered max_attempts times goes to
        DEAD here instead of out again, so a message that crashes every bot cannot loop.
        """
        deliveries: list[Delivery] = []
        async with self._write() as session:
            now = self._now_ns()
            while len(deliveries) < limit:
                wanted = limit - len(deliveries)
                query = (
                    select(MessageRow)
                    .where(UNSETTLED, MessageRow.visible_at_ns <= now)
                    .order_by(MessageRow.sequence)
                    .limit(wanted)
                    .with_for_update(skip_locked=True)
                )
                rows = (await session.scalars(query)).all()
                for row in rows:
                    if row.delivery_attempts >= self._max_attempts:
                        # Dead rows leave the unsettled set (flushed before the next query), so
                        # they do not use up the limit: the loop claims live ones in their place.
                        self._dead_letter(row)
                        continue
                    row.state = State.LEASED
                    row.delivery_attempts += 1
                    row.lease_token = new_lease_token()
                    row.visible_at_ns = now + lease_ns
                    deliveries.append(
                        Delivery(_to_stored(row, None, now), row.lease_token, row.visible_at_ns)
                    )
                if len(rows) < wanted:
                    break
        return deliveries

    def _dead_letter(self, row: MessageRow) -> None:
        row.state = State.DEAD
        row.lease_token = None
        row.last_error = row.last_error or DEAD_BY_ATTEMPTS.format(attempts=row.delivery_attempts)
        log.warning(
            "message is dead after %d attempts message_id=%s last_error=%r",
            row.delivery_attempts,
            row.id,
            row.last_error,
        )

    async def release(
        self, message_id: str, lease_token: str, *, reason: str, retry_after_ns: int
    ) -> StoredMessage:
        async with self._write() as session:
            row = await self._lock_row(session, message_id)
            self._check_lease(row, lease_token)
            now = self._now_ns()
            row.lease_token = None
            if not reason:
                # "Never started": a graceful hand-back does not use up an attempt.
                row.delivery_attempts = max(row.delivery_attempts - 1, 0)
            else:
                row.last_error = reason
            if reason and row.delivery_attempts >= self._max_attempts:
                self._dead_letter(row)
            else:
                row.state = State.PENDING
                row.visible_at_ns = now + retry_after_ns
            return _to_stored(row, None, now)

    async def release_leases(self, leases: Sequence[Lease]) -> int:
        """Hands back the leases of a stream that ended; returns how many were still held.

        The attempts stay counted (the delivery happened; it may have crashed the bot).
        """
        if not leases:
            return 0
        released = 0
        async with self._write() as session:
            now = self._now_ns()
            tokens = {lease.message_id: lease.lease_token for lease in leases}
            rows = await session.scalars(
                select(MessageRow)
                .where(MessageRow.id.in_(tokens), MessageRow.state == State.LEASED)
                .with_for_update()
            )
            for row in rows.all():
                if row.lease_token != tokens[row.id]:
                    continue
                released += 1
                row.lease_token = None
                if row.delivery_attempts >= self._max_attempts:
                    self._dead_letter(row)
                else:
                    row.state = State.PENDING
                    row.visible_at_ns = now
        return released

    async def extend_lease(self, message_id: str, lease_token: str, lease_ns: int) -> StoredMessage:
        async with self._write() as session:
            row = await self._lock_row(session, message_id)
            now = self._now_ns()
            self._check_lease(row, lease_token)
            if row.visible_at_ns <= now:
                raise FailedPrecondition(
                    f"the lease on message {message_id!r} has expired; it may be delivered again"
                )
            row.visible_at_ns = now + lease_ns
            return _to_stored(row, None, now)

    @staticmethod
    def _check_lease(row: MessageRow, lease_token: str) -> None:
        if row.state != State.LEASED or row.lease_token != lease_token:
            raise FailedPrecondition(
                f"lease_token is not the current lease of message {row.id!r} "
                f"(the message is {State(row.state).value}; a lease ends when it expires or "
                "the message is settled)"
            )

    async def requeue(self, message_id: str) -> StoredMessage:
        async with self._write() as session:
            row = await self._lock_row(session, message_id)
            if row.state != State.DEAD:
                raise FailedPrecondition(
                    f"message {message_id!r} is {State(row.state).value}; only DEAD messages "
                    "can be requeued"
                )
            now = self._now_ns()
            row.state = State.PENDING
            row.delivery_attempts = 0
            row.visible_at_ns = now
            return _to_stored(row, None, now)

    async def next_visible_ns(self) -> int | None:
        """When the earliest message that is not deliverable yet becomes deliverable."""
        async with self._read() as session:
            return await session.scalar(
                select(func.min(MessageRow.visible_at_ns)).where(
                    UNSETTLED, MessageRow.visible_at_ns > self._now_ns()
                )
            )

    async def release_all_leases(self) -> int:
        """Returns every lease to PENDING: for a store starting on a database only it uses."""
        async with self._write() as session:
            result = await session.execute(
                update(MessageRow)
                .where(MessageRow.state == State.LEASED)
                .values(state=State.PENDING, lease_token=None, visible_at_ns=0)
            )
            # An UPDATE's result is a CursorResult, which has rowcount; execute() is typed wider.
            return int(cast(CursorResult[Any], result).rowcount or 0)
