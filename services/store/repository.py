"""All SQL and every transaction of the store. Callers get plain dataclasses back.

Writes go through group commit (group_commit.py): requests that arrive together share one
transaction, and the hot ones, CreateMessage and MarkProcessed, are written a run at a time with
one statement each. SQLAlchemy Core, not the ORM: the unit of work costs more Python per row
than the rest of a write put together, and the queries here are plain.

The queries are the same on SQLite and PostgreSQL; the database module (database.py) decides
everything that differs, and wraps driver errors. What the queries count on:
- SQLite allows one writer at a time. Every write transaction starts with an INSERT or an
  UPDATE, so the write lock is taken before anything is read.
- PostgreSQL has concurrent writers: claims use FOR UPDATE SKIP LOCKED so two stores never hand
  out the same row, and every UPDATE re-checks its WHERE on the row it locked. Transactions that
  insert messages take turns (`_take_insert_turn`), so that `sequence` order is commit order and
  a follower reading `sequence > cursor` never skips a row that commits late.
Each hot write is as few statements as the SQL allows (INSERT ... ON CONFLICT DO NOTHING
RETURNING, UPDATE ... RETURNING): SQLAlchemy's Python per statement, not the SQL, is most of what
a write costs. Each transaction is one synchronous function of its connection, run whole in one
hop to the driver (Database.run_in_transaction), so the handlers below are plain functions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    Interval,
    Row,
    String,
    bindparam,
    case,
    cast,
    column,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    table,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update

from ackbot.store import migrations
from ackbot.store.database import CONFLICT_ERRORS, Database
from ackbot.store.errors import (
    AlreadyExists,
    ContextStale,
    FieldViolation,
    InvalidArgument,
    LeaseExpired,
    LeaseNotCurrent,
    NotDead,
    NotFound,
    StoreError,
)
from ackbot.store.group_commit import GroupCommitter
from ackbot.store.ids import new_lease_token, new_message_id, new_store_id
from ackbot.store.models import UNSETTLED, Base, MessageRow, State, StoreRow

log = logging.getLogger(__name__)


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
    conversation_id: str | None = None


@dataclass(frozen=True)
class NewMessage:
    author: str
    text: str
    id: str = ""
    create_time_ns: int | None = None
    # A reply's may be given only as its original's (MarkProcessed sets it either way).
    conversation_id: str | None = None


@dataclass(frozen=True)
class CreateResult:
    message: StoredMessage
    already_existed: bool


@dataclass(frozen=True)
class MarkResult:
    message: StoredMessage
    reply: StoredMessage | None
    already_processed: bool
    # Its conversation has messages waiting that this one held back: deliverable now.
    unblocked: bool = False


@dataclass(frozen=True)
class Delivery:
    message: StoredMessage
    lease_token: str
    lease_expire_ns: int


@dataclass(frozen=True)
class Lease:
    message_id: str
    lease_token: str


@dataclass(frozen=True)
class ReleasedLease:
    """A lease handed back because its holder was gone: the message is now PENDING or DEAD."""

    message_id: str
    state: State
    delivery_attempts: int


@dataclass(frozen=True)
class DeadStore:
    """A store that looks dead, and why."""

    id: str
    listen_address: str
    silent_seconds: float  # since its last heartbeat, by the database's clock
    session_gone: bool  # its registered database session no longer exists
    # False: not registered at all, yet it holds leases (see _UNREGISTERED_OWNERS)
    registered: bool = True


@dataclass(frozen=True)
class Reaped:
    """A dead store whose leases were handed back. `finished`: its registration is deleted;
    otherwise a lease of it was locked by another transaction, and a later reap goes on."""

    store: DeadStore
    released: list[ReleasedLease]
    finished: bool = False


MESSAGES = Base.metadata.tables[MessageRow.__tablename__]
STORES = Base.metadata.tables[StoreRow.__tablename__]
REPLIES = MESSAGES.alias("replies")
EARLIER = MESSAGES.alias("earlier")
# The predicate of ix_messages_unsettled_conversation, written out for the planners as UNSETTLED
# is, over EARLIER.
_EARLIER_UNSETTLED = text(
    "earlier.state IN ('PENDING', 'LEASED') AND earlier.conversation_id IS NOT NULL"
)
# Ordering keys (Pub/Sub's term): a message of a conversation waits while an earlier message of
# the same conversation is unsettled: PENDING (also while it waits out a retry_after) or LEASED
# (also with a lapsed lease). PROCESSED and DEAD ones no longer hold it back. The probe reads
# ix_messages_unsettled_conversation alone (its predicate is written out for the planners, as
# UNSETTLED is), so a long processed history costs nothing; a message without a conversation
# never reaches it.
_HELD_BACK = exists().where(
    EARLIER.c.conversation_id == MESSAGES.c.conversation_id,
    EARLIER.c.sequence < MESSAGES.c.sequence,
    _EARLIER_UNSETTLED,
)
_IN_ITS_TURN = or_(MESSAGES.c.conversation_id.is_(None), ~_HELD_BACK)
# A message with the id of its reply, if any: every read answers with both.
_WITH_REPLY_ID = select(MESSAGES, REPLIES.c.id.label("reply_id")).outerjoin(
    REPLIES, REPLIES.c.reply_to == MESSAGES.c.id
)
# MarkProcessed's one statement: it skips rows already PROCESSED, so a message is processed once
# however many marks race for it (on PostgreSQL the UPDATE re-checks the state on the row it
# locked).
_PROCESS_UNLESS_PROCESSED = (
    update(MESSAGES)
    .where(
        MESSAGES.c.id.in_(bindparam("ids", expanding=True)),
        MESSAGES.c.state != State.PROCESSED,
    )
    .values(
        state=State.PROCESSED, process_time_ns=bindparam("now"), lease_token=None, owner_store=None
    )
    .returning(*MESSAGES.c)
)
# -- the store registry's SQL (PostgreSQL only: registry.py) -----------------------------------
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
_LEASED = MESSAGES.c.state == State.LEASED
# Stores that hold leases but are not registered: one declared dead that leased on before it
# noticed, then died too, or one whose registration an operator deleted. Nobody else hands
# their leases back before they expire. (Every store registers before it leases anything.)
_UNREGISTERED_OWNERS = (
    select(MESSAGES.c.owner_store)
    .distinct()
    .where(
        _LEASED,
        MESSAGES.c.owner_store.is_not(None),
        ~exists().where(STORES.c.id == MESSAGES.c.owner_store),
    )
)

# Large enough to take a burst from every connected client, small enough that one transaction
# stays a few milliseconds long.
MAX_BATCH = 256
# The insert turn: a transaction-level advisory lock, the same for every store on a database.
# The key spells "ackbot:s"; in pg_locks it shows as classid 1633905506, objid 1869888115.
INSERT_TURN_KEY = int.from_bytes(b"ackbot:s", "big")
# The wait is bounded by --lock-timeout-seconds, as on SQLite: a store stuck inside a
# transaction costs the others UNAVAILABLE, not a hang (the setting then holds for the rest of
# that transaction's lock waits too). set_config comes first in the select list, which
# PostgreSQL evaluates in order, so the timeout is in force when the wait starts.
_TAKE_INSERT_TURN = select(
    func.set_config("lock_timeout", bindparam("lock_timeout_ms", type_=String), True),
    func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)),
)


@dataclass(frozen=True)
class _Mark:
    message_id: str
    reply: NewMessage | None
    # The newest sequence of the conversation the reply was written from; 0: not fenced.
    context_sequence: int = 0


@dataclass(frozen=True)
class _Claim:
    limit: int
    lease_ns: int


@dataclass(frozen=True)
class _Release:
    message_id: str
    lease_token: str
    reason: str
    retry_after_ns: int


@dataclass(frozen=True)
class _Extension:
    message_id: str
    lease_token: str
    lease_ns: int


class _Transaction:
    """An open write transaction, shared by every request of one group commit.

    A write that makes work for the streams (a create that inserted, a message back to PENDING)
    sets `made_work`; the transaction then announces it once, just before it commits, to the
    other stores sharing the database (Database.notify_work). Marks, extensions and claims make
    no work and never set it.

    The messages a write made DEAD are told (logged, counted, watched) only once the
    transaction has committed: a watcher told earlier would read the message as it was.
    """

    def __init__(self, connection: Connection, now_ns: int) -> None:
        self.connection = connection
        self.now_ns = now_ns
        self.has_insert_turn = False
        self.made_work = False
        # (message id, attempts, last error) of each message this transaction made DEAD
        self.went_dead: list[tuple[str, int, str]] = []


def _to_stored(row: Any, reply_id: str | None, now_ns: int) -> StoredMessage:
    """A row of MESSAGES (a Core Row or anything with its columns as attributes)."""
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
        conversation_id=row.conversation_id,
    )


def _with_reply(row: Row[Any], now_ns: int) -> StoredMessage:
    return _to_stored(row, row.reply_id, now_ns)


def _new_row(
    message_id: str,
    author: str,
    text: str,
    create_time_ns: int | None,
    now_ns: int,
    *,
    reply_to: str | None = None,
    conversation_id: str | None = None,
) -> dict[str, Any]:
    """The columns of a new message; a reply (`reply_to` set) is born PROCESSED."""
    return {
        "id": message_id,
        "author": author,
        "text": text,
        "create_time_ns": create_time_ns,
        "receive_time_ns": now_ns,
        "state": State.PENDING.value if reply_to is None else State.PROCESSED.value,
        "reply_to": reply_to,
        "delivery_attempts": 0,
        "last_error": None,
        "visible_at_ns": 0,
        "lease_token": None,
        "process_time_ns": None if reply_to is None else now_ns,
        "owner_store": None,
        "conversation_id": conversation_id,
    }


def _stored_new(values: dict[str, Any], sequence: int, now_ns: int) -> StoredMessage:
    """The StoredMessage of a row just inserted from `values` (see _new_row)."""
    return _to_stored(SimpleNamespace(**values, sequence=sequence), None, now_ns)


def _stale(tx: _Transaction, mark: _Mark, original: Any) -> ContextStale | None:
    """Staleness fencing: refuses a mark whose reply was written from the conversation as of
    `context_sequence` when a newer original (not a reply) of the conversation exists.

    Exact under concurrency: on SQLite the transaction holds the only write lock; on PostgreSQL
    the mark took the insert turn before this read, so every original that will ever commit
    below its sequence is visible, and any later one commits after this mark. A message already
    PROCESSED is not fenced: the mark is a retry, answered with the reply stored first.
    """
    if (
        not mark.context_sequence
        or original.conversation_id is None
        or original.state == State.PROCESSED
    ):
        return None
    newest = tx.connection.scalar(
        select(MESSAGES.c.id)
        .where(
            MESSAGES.c.conversation_id == original.conversation_id,
            MESSAGES.c.sequence > mark.context_sequence,
            MESSAGES.c.reply_to.is_(None),
            MESSAGES.c.id != mark.message_id,
        )
        .order_by(MESSAGES.c.sequence.desc())
        .limit(1)
    )
    if newest is None:
        return None
    return ContextStale(mark.message_id, newest, mark.context_sequence)


def _dead_store(row: Row[Any]) -> DeadStore:
    return DeadStore(row.id, row.listen_address, float(row.silent_seconds), row.session_gone)


def _unregistered(store_id: str) -> DeadStore:
    return DeadStore(store_id, "", 0.0, session_gone=False, registered=False)


def _log_dead(message_id: str, attempts: int, last_error: str) -> None:
    log.warning(
        "message is dead after %d attempts message_id=%s last_error=%r",
        attempts,
        message_id,
        last_error,
    )


class MessageRepository:
    def __init__(
        self,
        database: Database,
        *,
        max_attempts: int = 5,
        clock_ns: Callable[[], int] = time.time_ns,
        max_batch: int = MAX_BATCH,
        store_id: str | None = None,
        on_commit: Callable[[int], None] | None = None,
        on_dead: Callable[[str], None] | None = None,
    ) -> None:
        self._database = database
        # Hooks: the size of each committed write batch (metrics); the id of each message that
        # goes DEAD (metrics, watches).
        self._on_dead = on_dead
        # Recorded on every lease this store grants (messages.owner_store), so that the other
        # stores on a shared database can hand them back if it dies, and named in the
        # notifications its transactions send (see _Transaction).
        self._store_id = store_id or new_store_id()
        self._max_attempts = max_attempts
        self._now_ns = clock_ns
        self._writes = GroupCommitter(
            self._run_write,
            max_batch=max_batch,
            conflict_errors=CONFLICT_ERRORS,
            on_commit=on_commit,
        )
        # The hot statements are built once: building one costs more Python than running it.
        self._claim_oldest = self._build_claim()
        self._insert_if_free = (
            database.insert(MESSAGES)
            .on_conflict_do_nothing(index_elements=[MESSAGES.c.id])
            .returning(MESSAGES.c.id, MESSAGES.c.sequence)
        )

    def _dead(self, message_id: str, attempts: int, last_error: str) -> None:
        _log_dead(message_id, attempts, last_error)
        if self._on_dead is not None:
            self._on_dead(message_id)

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    @property
    def store_id(self) -> str:
        """This store's id: recorded on its leases, and named in its notifications."""
        return self._store_id

    @property
    def shared(self) -> bool:
        """Whether other stores may write to this database (PostgreSQL), so that work and lease
        expiries this store did not make can appear in it (Database.single_owner)."""
        return not self._database.single_owner

    async def create_schema(self) -> None:
        """Brings the database to the schema this ackbot expects (Alembic, to head): creates
        a new one, upgrades an older one, refuses one made by a newer ackbot."""
        await migrations.upgrade_to_head(self._database)

    async def dispose(self) -> None:
        await self._writes.close()
        await self._database.dispose()

    async def _run_write(self, body: Callable[[_Transaction], list[Any]]) -> list[Any]:
        """Runs a group commit's batch (`body`) in one transaction, in one hop to the driver."""
        now_ns = self._now_ns()
        went_dead: list[tuple[str, int, str]] = []

        def transaction(connection: Connection) -> list[Any]:
            tx = _Transaction(connection, now_ns)
            outcomes = body(tx)
            # Only reached when every write ran (an error rolls back and announces nothing);
            # delivered to the other stores at the commit that follows.
            if tx.made_work:
                self._database.notify_work(connection, self._store_id)
            went_dead[:] = tx.went_dead
            return outcomes

        outcomes = await self._database.run_in_transaction(transaction)
        # Told only now: the transaction has committed, and this is the event loop (the body
        # may have run on the driver's thread, where a watcher's wake-up must not be set).
        for message_id, attempts, last_error in went_dead:
            self._dead(message_id, attempts, last_error)
        return outcomes

    def _take_insert_turn(self, tx: _Transaction) -> None:
        """Waits for the insert turn where the database needs it (see
        Database.inserts_take_turns); held until the transaction ends.

        nextval() then runs under the lock, and PostgreSQL releases it only after the commit
        is visible: a reader that sees a row already sees every row with a lower sequence that
        will ever commit (with the sequence's CACHE 1, the default: a cache would hand each
        session numbers drawn earlier). Taken before the transaction's first row lock
        (inserting writes run first in a group commit, and marks take it before their UPDATE):
        a transaction waiting for the turn never holds a row that the holder may need.
        """
        if tx.has_insert_turn or not self._database.inserts_take_turns:
            return
        timeout_ms = max(1, round(self._database.lock_timeout_seconds * 1000))
        tx.connection.execute(
            _TAKE_INSERT_TURN, {"lock_timeout_ms": str(timeout_ms), "key": INSERT_TURN_KEY}
        )
        tx.has_insert_turn = True

    # -- creating and reading ---------------------------------------------------------------

    async def create_message(self, new: NewMessage) -> CreateResult:
        if not new.id:
            new = dataclasses.replace(new, id=new_message_id(self._now_ns()))
        return await self._writes.submit(self._create_many, new, runs_first=True)

    async def create_messages(self, news: list[NewMessage]) -> list[CreateResult | StoreError]:
        """Creates `news` in one transaction (BatchCreateMessages); one outcome per item, in
        order, an item's refusal (ID_TAKEN) among them. A failure of the transaction itself
        raises, and then nothing was written."""
        news = [
            new if new.id else dataclasses.replace(new, id=new_message_id(self._now_ns()))
            for new in news
        ]
        # Submitted as one request, so a group commit never splits it over two transactions.
        return await self._writes.submit(self._create_runs, news, runs_first=True)

    def _create_runs(
        self, tx: _Transaction, runs: list[list[NewMessage]]
    ) -> list[list[CreateResult | StoreError] | StoreError]:
        """The batch creates of one transaction, written by `_create_many` as one run."""
        outcomes = self._create_many(tx, [new for run in runs for new in run])
        answers: list[list[CreateResult | StoreError] | StoreError] = []
        start = 0
        for run in runs:
            answers.append(outcomes[start : start + len(run)])
            start += len(run)
        return answers

    def _create_many(
        self, tx: _Transaction, news: list[NewMessage]
    ) -> list[CreateResult | StoreError]:
        fresh: dict[str, NewMessage] = {}
        for new in news:
            fresh.setdefault(new.id, new)
        rows = {
            message_id: _new_row(
                message_id,
                new.author,
                new.text,
                new.create_time_ns,
                tx.now_ns,
                conversation_id=new.conversation_id,
            )
            for message_id, new in fresh.items()
        }
        inserted = self._insert_new(tx, list(rows.values()))
        if inserted:
            tx.made_work = True
        stored = {
            message_id: _stored_new(rows[message_id], sequence, tx.now_ns)
            for message_id, sequence in inserted.items()
        }
        taken = [message_id for message_id in fresh if message_id not in inserted]
        if taken:
            # Retried creates (or an id reused): compare with what is stored.
            query = _WITH_REPLY_ID.where(MESSAGES.c.id.in_(taken))
            for row in tx.connection.execute(query):
                stored[row.id] = _with_reply(row, tx.now_ns)
        outcomes: list[CreateResult | StoreError] = []
        for new in news:
            if new.id in inserted and fresh[new.id] is new:
                outcomes.append(CreateResult(stored[new.id], already_existed=False))
                continue
            try:
                outcomes.append(self._existing_create(stored[new.id], new))
            except AlreadyExists as exc:
                outcomes.append(exc)
        return outcomes

    def _insert_new(self, tx: _Transaction, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Inserts the rows whose id is free; returns id -> sequence of those inserted."""
        if not rows:
            return {}
        self._take_insert_turn(tx)
        result = tx.connection.execute(self._insert_if_free, rows)
        return {row.id: row.sequence for row in result}

    @staticmethod
    def _existing_create(existing: StoredMessage, new: NewMessage) -> CreateResult:
        # The conversation is compared like the text: a retry that names another thread is
        # not the same create, and moving a stored message to another thread would reorder
        # deliveries that may already have happened.
        if (existing.author, existing.text, existing.conversation_id) != (
            new.author,
            new.text,
            new.conversation_id,
        ):
            raise AlreadyExists(existing.id)
        return CreateResult(existing, already_existed=True)

    async def get_message(self, message_id: str) -> StoredMessage:
        query = _WITH_REPLY_ID.where(MESSAGES.c.id == message_id)
        row = await self._database.run_read(lambda connection: connection.execute(query).first())
        if row is None:
            raise NotFound(message_id)
        return _with_reply(row, self._now_ns())

    async def list_messages(
        self,
        *,
        after_sequence: int = 0,
        before_sequence: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
        state: State | None = None,
        reply_to: str | None = None,
        conversation_id: str | None = None,
    ) -> list[StoredMessage]:
        sequence = MESSAGES.c.sequence
        query = (
            _WITH_REPLY_ID.where(sequence > after_sequence)
            .order_by(sequence.desc() if newest_first else sequence)
            .limit(limit)
        )
        if before_sequence is not None:
            query = query.where(sequence < before_sequence)
        now = self._now_ns()
        if reply_to is not None:
            query = query.where(MESSAGES.c.reply_to == reply_to)
        if conversation_id is not None:
            query = query.where(MESSAGES.c.conversation_id == conversation_id)
        # LEASED rows whose lease lapsed are shown (and filtered) as PENDING.
        leased = MESSAGES.c.state == State.LEASED
        if state is State.PENDING:
            query = query.where(
                (MESSAGES.c.state == State.PENDING) | (leased & (MESSAGES.c.visible_at_ns <= now))
            )
        elif state is State.LEASED:
            query = query.where(leased & (MESSAGES.c.visible_at_ns > now))
        elif state is not None:
            query = query.where(MESSAGES.c.state == state)
        rows = await self._database.run_read(lambda connection: connection.execute(query).all())
        return [_with_reply(row, now) for row in rows]

    # -- settling ---------------------------------------------------------------------------

    async def mark_processed(
        self,
        message_id: str,
        reply: NewMessage | None,
        lease_token: str = "",
        *,
        context_sequence: int = 0,
    ) -> MarkResult:
        # The lease token is not checked: the first reply to commit wins, whoever holds the
        # lease, and every later one learns that the message was already processed.
        del lease_token
        return await self._writes.submit(
            self._mark_many, _Mark(message_id, reply, context_sequence), runs_first=True
        )

    def _mark_many(self, tx: _Transaction, marks: list[_Mark]) -> list[MarkResult | StoreError]:
        # Before the UPDATE's row locks, even when no reply is inserted: a mark may share its
        # transaction with creates.
        self._take_insert_turn(tx)
        # Checked before anything is written: a refused mark leaves its message as it was.
        refused = self._refuse_marks(tx, marks)
        accepted = [mark for mark in marks if id(mark) not in refused]
        ids = list(dict.fromkeys(mark.message_id for mark in accepted))
        processed_rows = tx.connection.execute(
            _PROCESS_UNLESS_PROCESSED, {"ids": ids, "now": tx.now_ns}
        )
        processed = {row.id: row for row in processed_rows}
        first_marks: dict[str, _Mark] = {}
        for mark in accepted:
            first_marks.setdefault(mark.message_id, mark)
        replies = {
            message_id: _new_row(
                new_message_id(tx.now_ns),
                mark.reply.author,
                mark.reply.text,
                tx.now_ns,
                tx.now_ns,
                reply_to=message_id,
                conversation_id=processed[message_id].conversation_id,
            )
            for message_id, mark in first_marks.items()
            if message_id in processed and mark.reply is not None
        }
        reply_sequences = self._insert_new(tx, list(replies.values()))
        unblocked = self._waiting_in(tx, {row.conversation_id for row in processed.values()})
        if unblocked:
            tx.made_work = True
        results: dict[str, MarkResult] = {}
        for message_id, row in processed.items():
            reply: StoredMessage | None = None
            if message_id in replies:
                values = replies[message_id]
                reply = _stored_new(values, reply_sequences[values["id"]], tx.now_ns)
            message = _to_stored(row, reply.id if reply else None, tx.now_ns)
            results[message_id] = MarkResult(
                message,
                reply,
                already_processed=False,
                unblocked=row.conversation_id in unblocked,
            )
        unprocessed = [message_id for message_id in ids if message_id not in processed]
        if unprocessed:
            # Unknown ids, and messages some earlier transaction processed.
            results.update(self._already_processed(tx.connection, unprocessed, tx.now_ns))
        outcomes: list[MarkResult | StoreError] = []
        for mark in marks:
            result = results.get(mark.message_id)
            if id(mark) in refused:
                outcomes.append(refused[id(mark)])
            elif result is None:
                outcomes.append(NotFound(mark.message_id))
            elif first_marks[mark.message_id] is mark:
                outcomes.append(result)
            else:
                outcomes.append(dataclasses.replace(result, already_processed=True))
        return outcomes

    @staticmethod
    def _waiting_in(tx: _Transaction, conversations: set[str | None]) -> set[str]:
        """Those of `conversations` with unsettled messages: a mark may have let them go."""
        conversations.discard(None)
        if not conversations:
            return set()
        query = (
            select(EARLIER.c.conversation_id)
            .distinct()
            .where(
                EARLIER.c.conversation_id.in_(conversations),
                _EARLIER_UNSETTLED,
            )
        )
        return set(tx.connection.scalars(query))

    @staticmethod
    def _refuse_marks(tx: _Transaction, marks: list[_Mark]) -> dict[int, StoreError]:
        """The marks (by id()) that must change nothing: a reply that names a conversation
        other than its original's, or one written from a stale conversation (see _stale)."""
        checked = [
            mark
            for mark in marks
            if (mark.reply and mark.reply.conversation_id) or mark.context_sequence
        ]
        if not checked:
            return {}
        originals = {
            row.id: row
            for row in tx.connection.execute(
                select(MESSAGES.c.id, MESSAGES.c.conversation_id, MESSAGES.c.state).where(
                    MESSAGES.c.id.in_({mark.message_id for mark in checked})
                )
            )
        }
        refused: dict[int, StoreError] = {}
        for mark in checked:
            original = originals.get(mark.message_id)
            if original is None:
                continue  # NotFound, as for any mark
            stale = _stale(tx, mark, original)
            if stale is not None:
                refused[id(mark)] = stale
                continue
            if mark.reply is None or not mark.reply.conversation_id:
                continue
            inherited = original.conversation_id
            if mark.reply.conversation_id != inherited:
                refused[id(mark)] = InvalidArgument(
                    [
                        FieldViolation(
                            "reply.conversation_id",
                            "must be empty or the conversation of the message it answers "
                            f"({inherited or 'none'}; got {mark.reply.conversation_id})",
                        )
                    ]
                )
        return refused

    @staticmethod
    def _already_processed(
        connection: Connection, message_ids: list[str], now: int
    ) -> dict[str, MarkResult]:
        """Those of `message_ids` that exist, each with its reply if it has one."""
        originals = (
            connection.execute(select(MESSAGES).where(MESSAGES.c.id.in_(message_ids)))
        ).all()
        query = select(MESSAGES).where(MESSAGES.c.reply_to.in_([row.id for row in originals]))
        replies = {row.reply_to: _to_stored(row, None, now) for row in connection.execute(query)}
        results = {}
        for row in originals:
            reply = replies.get(row.id)
            message = _to_stored(row, reply.id if reply else None, now)
            results[row.id] = MarkResult(message, reply, already_processed=True)
        return results

    async def claim(self, limit: int, lease_ns: int) -> list[Delivery]:
        """Leases up to `limit` deliverable messages, oldest first.

        Every claim counts an attempt. A message already delivered max_attempts times goes to
        DEAD here instead of out again, so a message that crashes every bot cannot loop.
        """
        # Claims run last in their transaction, so they see the messages created and released
        # in it: a create that shares a transaction with a claim is delivered at once.
        return await self._writes.submit_one(self._claim, _Claim(limit, lease_ns), runs_last=True)

    def _unless_exhausted(self, **live: Any) -> dict[str, Any]:
        """UPDATE values: `live` for a row with attempts left, DEAD for one without.

        A message already delivered max_attempts times goes to DEAD instead of out again, so
        a message that crashes every bot cannot loop; it keeps its last error, or says why.
        """
        exhausted = MESSAGES.c.delivery_attempts >= self._max_attempts
        dead = {
            "state": State.DEAD.value,
            "lease_token": None,
            "owner_store": None,
            "last_error": func.coalesce(
                MESSAGES.c.last_error,
                literal("delivered ")
                + cast(MESSAGES.c.delivery_attempts, String)
                + " times without being processed",
            ),
        }
        names = live.keys() | dead.keys()
        return {
            name: case(
                (exhausted, dead.get(name, MESSAGES.c[name])),
                else_=live.get(name, MESSAGES.c[name]),
            )
            for name in names
        }

    def _build_claim(self) -> Update:
        """The claim, built once: it leases the `wanted` oldest deliverable messages."""
        # Unique per delivery without a round trip per row: a random part drawn once per
        # claim, then the row's sequence.
        token = bindparam("token_prefix", type_=String) + cast(MESSAGES.c.sequence, String)
        oldest_deliverable = (
            select(MESSAGES.c.sequence)
            .where(UNSETTLED, MESSAGES.c.visible_at_ns <= bindparam("now"), _IN_ITS_TURN)
            .order_by(MESSAGES.c.sequence)
            .limit(bindparam("wanted"))
            .with_for_update(skip_locked=True)
        )
        leased = self._unless_exhausted(
            state=State.LEASED.value,
            delivery_attempts=MESSAGES.c.delivery_attempts + 1,
            lease_token=token,
            owner_store=bindparam("owner", type_=String),
            visible_at_ns=bindparam("expiry"),
        )
        return (
            update(MESSAGES)
            .where(MESSAGES.c.sequence.in_(oldest_deliverable))
            .values(leased)
            .returning(*MESSAGES.c)
        )

    def _claim(self, tx: _Transaction, claim: _Claim) -> list[Delivery]:
        expiry = tx.now_ns + claim.lease_ns
        params = {
            "now": tx.now_ns,
            "expiry": expiry,
            "token_prefix": new_lease_token() + ":",
            "owner": self._store_id,
        }
        deliveries: list[Delivery] = []
        while len(deliveries) < claim.limit:
            wanted = claim.limit - len(deliveries)
            rows = (tx.connection.execute(self._claim_oldest, {**params, "wanted": wanted})).all()
            for row in sorted(rows, key=lambda row: row.sequence):
                if row.state == State.DEAD:
                    tx.went_dead.append((row.id, row.delivery_attempts, row.last_error))
                else:
                    deliveries.append(
                        Delivery(_to_stored(row, None, tx.now_ns), row.lease_token, expiry)
                    )
            # Dead rows left the unsettled set without using up the limit: claim live ones in
            # their place, and the messages of their conversations they held back.
            dead = [row for row in rows if row.state == State.DEAD]
            if not dead or (len(rows) < wanted and not any(r.conversation_id for r in dead)):
                break
        return deliveries

    async def release(
        self, message_id: str, lease_token: str, *, reason: str, retry_after_ns: int
    ) -> StoredMessage:
        return await self._writes.submit_one(
            self._release, _Release(message_id, lease_token, reason, retry_after_ns)
        )

    def _release(self, tx: _Transaction, release: _Release) -> StoredMessage | StoreError:
        visible_at = tx.now_ns + release.retry_after_ns
        if release.reason:
            values = self._unless_exhausted(
                state=State.PENDING.value,
                lease_token=None,
                owner_store=None,
                visible_at_ns=visible_at,
            )
            # The reason replaces the last error whether the message lives or dies.
            values["last_error"] = release.reason
        else:
            # "Never started": a graceful hand-back gives its attempt back and never kills.
            attempts = MESSAGES.c.delivery_attempts
            values = {
                "state": State.PENDING.value,
                "lease_token": None,
                "owner_store": None,
                "visible_at_ns": visible_at,
                "delivery_attempts": case((attempts > 0, attempts - 1), else_=0),
            }
        row = self._update_leased(tx, release.message_id, release.lease_token, values)
        if isinstance(row, StoreError):
            return row
        if row.state == State.DEAD:
            tx.went_dead.append((row.id, row.delivery_attempts, row.last_error))
        # Deliverable now or after its retry_after, or DEAD and no longer holding back the
        # rest of its conversation: either way other stores must know.
        if row.state != State.DEAD or row.conversation_id is not None:
            tx.made_work = True
        return _to_stored(row, None, tx.now_ns)

    def _update_leased(
        self, tx: _Transaction, message_id: str, lease_token: str, values: dict[str, Any]
    ) -> Row[Any] | StoreError:
        """Applies `values` to the message if `lease_token` is its current lease; otherwise
        says why not (unknown id, or not that lease)."""
        row = (
            tx.connection.execute(
                update(MESSAGES)
                .where(
                    MESSAGES.c.id == message_id,
                    MESSAGES.c.state == State.LEASED,
                    MESSAGES.c.lease_token == lease_token,
                )
                .values(values)
                .returning(*MESSAGES.c)
            )
        ).first()
        if row is not None:
            return row
        current = self._current_state(tx, message_id)
        if current is None:
            return NotFound(message_id)
        return LeaseNotCurrent(
            message_id,
            f"lease_token is not the current lease of message {message_id!r} (the message is "
            f"{current}; a lease ends when it expires or the message is settled)",
        )

    @staticmethod
    def _current_state(tx: _Transaction, message_id: str) -> str | None:
        return tx.connection.scalar(select(MESSAGES.c.state).where(MESSAGES.c.id == message_id))

    async def release_leases(self, leases: Sequence[Lease]) -> list[ReleasedLease]:
        """Hands back the leases of a stream that ended; returns those that were still held,
        each PENDING again or DEAD.

        The attempts stay counted (the delivery happened; it may have crashed the bot).
        """
        if not leases:
            return []
        return await self._writes.submit_one(self._release_leases, list(leases))

    def _release_leases(self, tx: _Transaction, leases: list[Lease]) -> list[ReleasedLease]:
        held = tuple_(MESSAGES.c.id, MESSAGES.c.lease_token).in_(
            [(lease.message_id, lease.lease_token) for lease in leases]
        )
        return self._hand_back(tx, held)

    def _hand_back(self, tx: _Transaction, *where: Any) -> list[ReleasedLease]:
        """Hands back the LEASED rows matching `where` whose holder is gone (a stream that
        ended, a store that died or stopped): deliverable at once, the attempt still counted
        (the delivery happened; it may have crashed the bot), DEAD if it was the last."""
        rows = (
            tx.connection.execute(
                update(MESSAGES)
                .where(MESSAGES.c.state == State.LEASED, *where)
                .values(
                    self._unless_exhausted(
                        state=State.PENDING.value,
                        lease_token=None,
                        owner_store=None,
                        visible_at_ns=tx.now_ns,
                    )
                )
                .returning(
                    MESSAGES.c.id,
                    MESSAGES.c.state,
                    MESSAGES.c.delivery_attempts,
                    MESSAGES.c.last_error,
                    MESSAGES.c.conversation_id,
                )
            )
        ).all()
        released = []
        for row in rows:
            if row.state == State.DEAD:
                tx.went_dead.append((row.id, row.delivery_attempts, row.last_error))
            if row.state != State.DEAD or row.conversation_id is not None:
                tx.made_work = True
            released.append(ReleasedLease(row.id, State(row.state), row.delivery_attempts))
        return released

    async def extend_lease(self, message_id: str, lease_token: str, lease_ns: int) -> StoredMessage:
        return await self._writes.submit_one(
            self._extend, _Extension(message_id, lease_token, lease_ns)
        )

    def _extend(self, tx: _Transaction, extension: _Extension) -> StoredMessage | StoreError:
        # A lapsed lease cannot be extended: the message may be on its way to another bot.
        # The CASE keeps a lapsed row as it is, and the lapse is reported below.
        lapsed = MESSAGES.c.visible_at_ns <= tx.now_ns
        row = self._update_leased(
            tx,
            extension.message_id,
            extension.lease_token,
            {
                "visible_at_ns": case(
                    (lapsed, MESSAGES.c.visible_at_ns), else_=tx.now_ns + extension.lease_ns
                )
            },
        )
        if isinstance(row, StoreError):
            return row
        if row.visible_at_ns <= tx.now_ns:
            return LeaseExpired(
                row.id, f"the lease on message {row.id!r} has expired; it may be delivered again"
            )
        return _to_stored(row, None, tx.now_ns)

    async def requeue(self, message_id: str) -> StoredMessage:
        return await self._writes.submit_one(self._requeue, message_id)

    def _requeue(self, tx: _Transaction, message_id: str) -> StoredMessage | StoreError:
        row = (
            tx.connection.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == message_id, MESSAGES.c.state == State.DEAD)
                .values(state=State.PENDING, delivery_attempts=0, visible_at_ns=tx.now_ns)
                .returning(*MESSAGES.c)
            )
        ).first()
        if row is not None:
            tx.made_work = True
            return _to_stored(row, None, tx.now_ns)
        current = self._current_state(tx, message_id)
        if current is None:
            return NotFound(message_id)
        return NotDead(
            message_id, f"message {message_id!r} is {current}; only DEAD messages can be requeued"
        )

    # -- the store registry (a shared PostgreSQL database; registry.py drives it) -------------

    async def register_store(self, session: AsyncConnection, listen_address: str) -> None:
        """Registers this store, its heartbeat now, on `session`: the dedicated session whose
        backend the other stores check."""
        async with self._database.translate_errors(), session.begin():
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
        """Tells the other stores this one is alive; False when its registration is gone (it
        was declared dead). After a reconnect (`new_session`), `session` is the one to check."""
        values: dict[str, Any] = {"heartbeat_at": _DB_NOW}
        if new_session:
            values.update(_OWN_BACKEND)
        async with self._database.translate_errors(), session.begin():
            beat = await session.scalar(
                update(STORES)
                .where(STORES.c.id == self._store_id)
                .values(values)
                .returning(STORES.c.id)
            )
        return beat is not None

    async def find_dead_stores(self, dead_after_seconds: float) -> list[DeadStore]:
        """The other stores whose heartbeat is older than `dead_after_seconds`, or whose
        registered session is gone, and those that hold leases unregistered (a read:
        reap_dead_stores decides, under row locks)."""
        params = self._dead_params(dead_after_seconds)

        def read(connection: Connection) -> list[DeadStore]:
            rows = connection.execute(_DEAD_STORES, params)
            unregistered = connection.scalars(_UNREGISTERED_OWNERS)
            return [_dead_store(row) for row in rows] + [_unregistered(s) for s in unregistered]

        return await self._database.run_read(read)

    async def reap_dead_stores(self, dead_after_seconds: float) -> list[Reaped]:
        """Hands back the leases of every store that is dead (as find_dead_stores says, checked
        again here) and deletes its registration, in one transaction; and the leases of stores
        that are not registered.

        Never waits on a lock, so it cannot hold up the writes it shares a transaction with: a
        store another reaper is handling is skipped (SKIP LOCKED), and so is a lease another
        transaction holds; the store's registration then stays until a later reap finds none.

        A transaction of its own, not one of group commit's: the writes queued there may be
        waiting for the very store this reap is about to declare dead (registry.py).
        """
        outcome = await self._run_write(lambda tx: [self._reap(tx, dead_after_seconds)])
        reaped: list[Reaped] = outcome[0]
        return reaped

    def _reap(self, tx: _Transaction, dead_after_seconds: float) -> list[Reaped]:
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
                .where(UNSETTLED, _LEASED, owned)
                .with_for_update(skip_locked=True)
            )
            released = self._hand_back(tx, owned, MESSAGES.c.sequence.in_(unlocked))
            reaped.append(Reaped(store, released))
        finished: set[str] = set()
        if dead:
            still_held = exists().where(UNSETTLED, _LEASED, MESSAGES.c.owner_store == STORES.c.id)
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

    async def deregister_store(self) -> list[ReleasedLease]:
        """Hands back every lease this store still holds and deletes its registration: the
        last write of a store that stops (or was declared dead, whose row is gone already)."""
        return await self._writes.submit_one(self._deregister, self._store_id)

    def _deregister(self, tx: _Transaction, store_id: str) -> list[ReleasedLease]:
        released = self._hand_back(tx, UNSETTLED, MESSAGES.c.owner_store == store_id)
        tx.connection.execute(delete(STORES).where(STORES.c.id == store_id))
        return released

    def _dead_params(self, dead_after_seconds: float) -> dict[str, Any]:
        return {"me": self._store_id, "dead_after": timedelta(seconds=dead_after_seconds)}

    async def next_visible_ns(self) -> int | None:
        """When the earliest message that is not deliverable yet becomes deliverable."""
        query = select(func.min(MESSAGES.c.visible_at_ns)).where(
            UNSETTLED, MESSAGES.c.visible_at_ns > self._now_ns()
        )
        next_visible: int | None = await self._database.run_read(
            lambda connection: connection.scalar(query)
        )
        return next_visible

    async def sample_states(self) -> tuple[dict[str, int], int | None]:
        """(messages by state, receive time of the oldest PENDING or None), for GetStats and
        the metrics' sampler, with lapsed leases counted as PENDING, as every read shows them:
        a count over the state index, and the oldest PENDING from the partial index of
        unsettled rows, which holds only the backlog however many rows are PROCESSED."""
        now = self._now_ns()
        lapsed = (MESSAGES.c.state == State.LEASED) & (MESSAGES.c.visible_at_ns <= now)

        def read(connection: Connection) -> tuple[dict[str, int], int | None]:
            rows = connection.execute(
                select(MESSAGES.c.state, func.count()).group_by(MESSAGES.c.state)
            )
            counts = {state.value: 0 for state in State}
            counts.update({State(state).value: int(count) for state, count in rows.all()})
            lapsed_count = connection.scalar(select(func.count()).where(lapsed))
            moved = int(lapsed_count or 0)
            counts[State.LEASED.value] -= moved
            counts[State.PENDING.value] += moved
            oldest = connection.scalar(
                select(MESSAGES.c.receive_time_ns)
                .where(UNSETTLED, (MESSAGES.c.state == State.PENDING) | lapsed)
                .order_by(MESSAGES.c.sequence)
                .limit(1)
            )
            return counts, oldest

        return await self._database.run_read(read)

    async def release_all_leases(self) -> int:
        """Returns every lease to PENDING: for a store starting on a database only it uses."""
        async with self._database.begin() as connection:
            result = await connection.execute(
                update(MESSAGES)
                .where(MESSAGES.c.state == State.LEASED)
                .values(state=State.PENDING, lease_token=None, owner_store=None, visible_at_ns=0)
            )
            return int(result.rowcount or 0)
