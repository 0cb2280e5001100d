"""The messages table: creating, reading and processing messages, requeueing dead ones,
approving held ones, and deleting (tombstones).

Handing messages out and back (leases, attempts, DEAD) is leases.py's, on the same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row, bindparam, exists, func, or_, select, text, update
from sqlalchemy.engine import Connection

from ackbot.store.database import Database
from ackbot.store.errors import (
    AlreadyExists,
    ContextStale,
    DeletedIdTaken,
    FieldViolation,
    InvalidArgument,
    MessageDeleted,
    MessageHeld,
    NotDead,
    NotFound,
    NotHeld,
    StoreError,
)
from ackbot.store.ids import new_message_id
from ackbot.store.models import UNSETTLED, State
from ackbot.store.tables.transaction import MESSAGES, Transaction
from ackbot.store.types import (
    Cause,
    CreateResult,
    DeleteResult,
    MarkResult,
    NewMessage,
    StoredMessage,
)

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
IN_ITS_TURN = or_(MESSAGES.c.conversation_id.is_(None), ~_HELD_BACK)
# A message with the id of its reply, if any: every read answers with both. A deleted reply is
# no reply: its original (deleted alone or not) names none.
_WITH_REPLY_ID = select(MESSAGES, REPLIES.c.id.label("reply_id")).outerjoin(
    REPLIES, (REPLIES.c.reply_to == MESSAGES.c.id) & (REPLIES.c.state != State.DELETED)
)
# MarkProcessed's one statement: it skips rows already PROCESSED (and HELD or DELETED ones), so
# a message is processed once however many marks race for it (on PostgreSQL the UPDATE
# re-checks the state on the row it locked).
_PROCESS_UNLESS_PROCESSED = (
    update(MESSAGES)
    .where(
        MESSAGES.c.id.in_(bindparam("ids", expanding=True)),
        # HELD was never delivered, DELETED must never be answered: both refused below.
        MESSAGES.c.state.not_in([State.PROCESSED.value, State.HELD.value, State.DELETED.value]),
    )
    .values(
        state=State.PROCESSED, process_time_ns=bindparam("now"), lease_token=None, owner_store=None
    )
    .returning(*MESSAGES.c)
)
# What stays of a deleted message: its id, sequence, conversation, reply_to and receive_time
# (its place), nothing anyone wrote. No lease: a LEASED message's lease ends with it.
_TOMBSTONE = {
    "state": State.DELETED.value,
    "author": "",
    "text": "",
    "create_time_ns": None,
    "last_error": None,
    "lease_token": None,
    "owner_store": None,
    "visible_at_ns": 0,
}
NOT_DELETED = MESSAGES.c.state != State.DELETED


@dataclass(frozen=True)
class Mark:
    message_id: str
    reply: NewMessage | None
    # The newest sequence of the conversation the reply was written from; 0: not fenced.
    context_sequence: int = 0


def to_stored(row: Any, reply_id: str | None, now_ns: int) -> StoredMessage:
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
    return to_stored(row, row.reply_id, now_ns)


def _new_row(
    message_id: str,
    author: str,
    text: str,
    create_time_ns: int | None,
    now_ns: int,
    *,
    reply_to: str | None = None,
    conversation_id: str | None = None,
    hold: bool = False,
) -> dict[str, Any]:
    """The columns of a new message; a reply (`reply_to` set) is born PROCESSED, a held one
    HELD."""
    state = State.PENDING if reply_to is None else State.PROCESSED
    if hold and reply_to is None:
        state = State.HELD
    return {
        "id": message_id,
        "author": author,
        "text": text,
        "create_time_ns": create_time_ns,
        "receive_time_ns": now_ns,
        "state": state.value,
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
    return to_stored(SimpleNamespace(**values, sequence=sequence), None, now_ns)


def current_state(tx: Transaction, message_id: str) -> str | None:
    return tx.connection.scalar(select(MESSAGES.c.state).where(MESSAGES.c.id == message_id))


class MessagesTable:
    def __init__(self, database: Database) -> None:
        # Built once: building a statement costs more Python than running it.
        self._insert_if_free = (
            database.insert(MESSAGES)
            .on_conflict_do_nothing(index_elements=[MESSAGES.c.id])
            .returning(MESSAGES.c.id, MESSAGES.c.sequence)
        )

    # -- creating ---------------------------------------------------------------------------

    def create_runs(
        self, tx: Transaction, runs: list[list[NewMessage]]
    ) -> list[list[CreateResult | StoreError] | StoreError]:
        """The batch creates of one transaction, written by `create_many` as one run."""
        outcomes = self.create_many(tx, [new for run in runs for new in run])
        answers: list[list[CreateResult | StoreError] | StoreError] = []
        start = 0
        for run in runs:
            answers.append(outcomes[start : start + len(run)])
            start += len(run)
        return answers

    def create_many(
        self, tx: Transaction, news: list[NewMessage]
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
                hold=bool(new.hold),
            )
            for message_id, new in fresh.items()
        }
        inserted = self._insert_new(tx, list(rows.values()))
        stored = {
            message_id: _stored_new(rows[message_id], sequence, tx.now_ns)
            for message_id, sequence in inserted.items()
        }
        for message in stored.values():
            tx.changed(Cause.CREATED, message, sequence=message.sequence)
        if any(message.state is State.PENDING for message in stored.values()):
            # A HELD message is work only once approved.
            tx.changes.created_work = True
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
                outcomes.append(_existing_create(stored[new.id], new))
            except AlreadyExists as exc:
                outcomes.append(exc)
        return outcomes

    def _insert_new(self, tx: Transaction, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Inserts the rows whose id is free; returns id -> sequence of those inserted."""
        if not rows:
            return {}
        tx.take_insert_turn()
        result = tx.connection.execute(self._insert_if_free, rows)
        return {row.id: row.sequence for row in result}

    # -- processing -------------------------------------------------------------------------

    def mark_many(self, tx: Transaction, marks: list[Mark]) -> list[MarkResult | StoreError]:
        # Before the UPDATE's row locks, even when no reply is inserted: a mark may share its
        # transaction with creates.
        tx.take_insert_turn()
        # Checked before anything is written: a refused mark leaves its message as it was.
        refused = _refuse_marks(tx, marks)
        accepted = [mark for mark in marks if id(mark) not in refused]
        ids = list(dict.fromkeys(mark.message_id for mark in accepted))
        processed_rows = tx.connection.execute(
            _PROCESS_UNLESS_PROCESSED, {"ids": ids, "now": tx.now_ns}
        )
        processed = {row.id: row for row in processed_rows}
        first_marks: dict[str, Mark] = {}
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
        unblocked = _waiting_in(tx, {row.conversation_id for row in processed.values()})
        if unblocked:
            # The next message of each such conversation is deliverable now.
            tx.work_at(tx.now_ns)
        results: dict[str, MarkResult | StoreError] = {}
        for message_id, row in processed.items():
            reply: StoredMessage | None = None
            if message_id in replies:
                values = replies[message_id]
                reply = _stored_new(values, reply_sequences[values["id"]], tx.now_ns)
                tx.changed(Cause.CREATED, reply, sequence=reply.sequence)
            tx.changed(
                Cause.PROCESSED,
                row,
                receive_time_ns=row.receive_time_ns,
                reply_id=reply.id if reply else None,
            )
            message = to_stored(row, reply.id if reply else None, tx.now_ns)
            results[message_id] = MarkResult(
                message,
                reply,
                already_processed=False,
                unblocked=row.conversation_id in unblocked,
            )
        unprocessed = [message_id for message_id in ids if message_id not in processed]
        if unprocessed:
            # Unknown ids, and messages some earlier transaction processed.
            results.update(_already_processed(tx.connection, unprocessed, tx.now_ns))
        outcomes: list[MarkResult | StoreError] = []
        for mark in marks:
            result = results.get(mark.message_id)
            if id(mark) in refused:
                outcomes.append(refused[id(mark)])
            elif result is None:
                outcomes.append(NotFound(mark.message_id))
            elif isinstance(result, StoreError) or first_marks[mark.message_id] is mark:
                outcomes.append(result)
            else:
                outcomes.append(dataclasses.replace(result, already_processed=True))
        return outcomes

    # -- moderation: approving, deleting ----------------------------------------------------

    def approve(self, tx: Transaction, message_id: str) -> StoredMessage | StoreError:
        """ApproveMessage: HELD -> PENDING, deliverable at once (its conversation's order
        permitting), announced to every store as a create is."""
        row = (
            tx.connection.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == message_id, MESSAGES.c.state == State.HELD)
                .values(state=State.PENDING, visible_at_ns=tx.now_ns)
                .returning(*MESSAGES.c)
            )
        ).first()
        if row is not None:
            tx.changed(Cause.APPROVED, row)
            tx.work_at(tx.now_ns)
            return to_stored(row, None, tx.now_ns)
        current = current_state(tx, message_id)
        if current is None:
            return NotFound(message_id)
        if current == State.DELETED:
            return MessageDeleted(message_id)
        return NotHeld(
            message_id, f"message {message_id!r} is {current}; only HELD messages can be approved"
        )

    def delete(self, tx: Transaction, message_id: str) -> DeleteResult | StoreError:
        """DeleteMessage: the message and its reply become tombstones; idempotent."""
        tombstones = self.tombstone(tx, [message_id])
        mine = next((t for t in tombstones if t.id == message_id), None)
        if mine is not None:
            return DeleteResult(mine, already_deleted=False, deleted_count=len(tombstones))
        row = tx.connection.execute(_WITH_REPLY_ID.where(MESSAGES.c.id == message_id)).first()
        if row is None:
            return NotFound(message_id)
        return DeleteResult(
            _with_reply(row, tx.now_ns), already_deleted=True, deleted_count=len(tombstones)
        )

    def tombstone(self, tx: Transaction, ids: Collection[str]) -> list[StoredMessage]:
        """Deletes the messages `ids` and the replies to them, in this transaction: each becomes
        a tombstone (see _TOMBSTONE), recorded as a DELETED change (with the lease it was under,
        so that its stream's slot is freed). Those already deleted, and unknown ids, are left
        as they are. Returns the tombstones made, in sequence order.

        The rows are locked first (FOR UPDATE on PostgreSQL; SQLite's transaction holds the
        only write lock), so a claim or a mark racing with the delete either commits first and
        is deleted with it, or waits and then finds a tombstone.
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        targets = or_(MESSAGES.c.id.in_(wanted), MESSAGES.c.reply_to.in_(wanted))
        before = tx.connection.execute(
            select(
                MESSAGES.c.id,
                MESSAGES.c.state,
                MESSAGES.c.lease_token,
                MESSAGES.c.conversation_id,
            )
            .where(targets, NOT_DELETED)
            .order_by(MESSAGES.c.sequence)
            .with_for_update()
        ).all()
        if not before:
            return []
        rows = tx.connection.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id.in_([row.id for row in before]), NOT_DELETED)
            .values(_TOMBSTONE)
            .returning(*MESSAGES.c)
        ).all()
        was = {row.id: row for row in before}
        tombstones = []
        for row in sorted(rows, key=lambda row: row.sequence):
            old = was[row.id]
            leased = old.state == State.LEASED
            tx.changed(Cause.DELETED, row, lease_token=old.lease_token if leased else None)
            tombstones.append(to_stored(row, None, tx.now_ns))
            if old.conversation_id is not None and old.state in (State.PENDING, State.LEASED):
                # It held its conversation's later messages back: they may go now.
                tx.work_at(tx.now_ns)
        return tombstones

    def tombstone_where(
        self, tx: Transaction, *where: Any, limit: int, skip_locked: bool = False
    ) -> list[StoredMessage]:
        """Tombstones up to `limit` messages matching `where` (oldest first, tombstones never
        counted) and the replies to them, as `tombstone` does: one batch of an erasure. With
        `skip_locked` (PostgreSQL), rows another transaction holds are left for a later batch
        instead of waited for."""
        query = (
            select(MESSAGES.c.id)
            .where(NOT_DELETED, *where)
            .order_by(MESSAGES.c.sequence)
            .limit(limit)
        )
        if skip_locked:
            query = query.with_for_update(skip_locked=True)
        return self.tombstone(tx, list(tx.connection.scalars(query)))

    # -- requeueing -------------------------------------------------------------------------

    def requeue(self, tx: Transaction, message_id: str) -> StoredMessage | StoreError:
        row = (
            tx.connection.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == message_id, MESSAGES.c.state == State.DEAD)
                .values(state=State.PENDING, delivery_attempts=0, visible_at_ns=tx.now_ns)
                .returning(*MESSAGES.c)
            )
        ).first()
        if row is not None:
            tx.changed(Cause.REQUEUED, row)
            tx.work_at(tx.now_ns)
            return to_stored(row, None, tx.now_ns)
        current = current_state(tx, message_id)
        if current is None:
            return NotFound(message_id)
        return NotDead(
            message_id, f"message {message_id!r} is {current}; only DEAD messages can be requeued"
        )


def _existing_create(existing: StoredMessage, new: NewMessage) -> CreateResult:
    if existing.state is State.DELETED:
        # Whatever the content: a retried create must not bring a deleted message back.
        raise DeletedIdTaken(existing.id)
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


def _waiting_in(tx: Transaction, conversations: set[str | None]) -> set[str]:
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


def _refuse_marks(tx: Transaction, marks: list[Mark]) -> dict[int, StoreError]:
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
        if original is None or original.state in (State.HELD, State.DELETED):
            continue  # NotFound, MessageHeld or MessageDeleted, as for any mark
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


def _stale(tx: Transaction, mark: Mark, original: Any) -> ContextStale | None:
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
            # Not yet (HELD) or no longer (DELETED) part of the conversation.
            MESSAGES.c.state.not_in([State.HELD.value, State.DELETED.value]),
        )
        .order_by(MESSAGES.c.sequence.desc())
        .limit(1)
    )
    if newest is None:
        return None
    return ContextStale(mark.message_id, newest, mark.context_sequence)


def _already_processed(
    connection: Connection, message_ids: list[str], now: int
) -> dict[str, MarkResult | StoreError]:
    """Those of `message_ids` that exist, each with its reply if it has one; a HELD or
    DELETED one with the error its mark gets."""
    found = (connection.execute(select(MESSAGES).where(MESSAGES.c.id.in_(message_ids)))).all()
    results: dict[str, MarkResult | StoreError] = {}
    originals = []
    for row in found:
        if row.state == State.DELETED:
            results[row.id] = MessageDeleted(row.id)
        elif row.state == State.HELD:
            results[row.id] = MessageHeld(
                row.id, f"message {row.id!r} is HELD for moderation; it was never delivered"
            )
        else:
            originals.append(row)
    query = select(MESSAGES).where(MESSAGES.c.reply_to.in_([row.id for row in originals]))
    replies = {row.reply_to: to_stored(row, None, now) for row in connection.execute(query)}
    for row in originals:
        reply = replies.get(row.id)
        message = to_stored(row, reply.id if reply else None, now)
        results[row.id] = MarkResult(message, reply, already_processed=True)
    return results


# -- reads (no transaction of their own: Database.run_read) ---------------------------------


def get_message(connection: Connection, message_id: str, now_ns: int) -> StoredMessage | None:
    row = connection.execute(_WITH_REPLY_ID.where(MESSAGES.c.id == message_id)).first()
    return None if row is None else _with_reply(row, now_ns)


def list_messages(
    connection: Connection,
    now_ns: int,
    *,
    after_sequence: int,
    before_sequence: int | None,
    newest_first: bool,
    limit: int,
    state: State | None,
    reply_to: str | None,
    conversation_id: str | None,
) -> list[StoredMessage]:
    sequence = MESSAGES.c.sequence
    query = (
        _WITH_REPLY_ID.where(sequence > after_sequence)
        .order_by(sequence.desc() if newest_first else sequence)
        .limit(limit)
    )
    if before_sequence is not None:
        query = query.where(sequence < before_sequence)
    if reply_to is not None:
        query = query.where(MESSAGES.c.reply_to == reply_to)
    if conversation_id is not None:
        query = query.where(MESSAGES.c.conversation_id == conversation_id)
    # LEASED rows whose lease lapsed are shown (and filtered) as PENDING.
    leased = MESSAGES.c.state == State.LEASED
    if state is State.PENDING:
        query = query.where(
            (MESSAGES.c.state == State.PENDING) | (leased & (MESSAGES.c.visible_at_ns <= now_ns))
        )
    elif state is State.LEASED:
        query = query.where(leased & (MESSAGES.c.visible_at_ns > now_ns))
    elif state is not None:
        query = query.where(MESSAGES.c.state == state)
    else:
        # Tombstones are shown only to those who ask for them.
        query = query.where(NOT_DELETED)
    return [_with_reply(row, now_ns) for row in connection.execute(query).all()]


def next_visible_ns(connection: Connection, now_ns: int) -> int | None:
    """When the earliest message that is not deliverable yet becomes deliverable."""
    query = select(func.min(MESSAGES.c.visible_at_ns)).where(
        UNSETTLED, MESSAGES.c.visible_at_ns > now_ns
    )
    next_visible: int | None = connection.scalar(query)
    return next_visible


def sample_states(connection: Connection, now_ns: int) -> tuple[dict[str, int], int | None]:
    """(messages by state, receive time of the oldest PENDING or None), with lapsed leases
    counted as PENDING, as every read shows them: a count over the state index, and the oldest
    PENDING from the partial index of unsettled rows, which holds only the backlog however many
    rows are PROCESSED."""
    lapsed = (MESSAGES.c.state == State.LEASED) & (MESSAGES.c.visible_at_ns <= now_ns)
    rows = connection.execute(select(MESSAGES.c.state, func.count()).group_by(MESSAGES.c.state))
    counts = {state.value: 0 for state in State}
    counts.update({State(state).value: int(count) for state, count in rows.all()})
    moved = int(connection.scalar(select(func.count()).where(lapsed)) or 0)
    counts[State.LEASED.value] -= moved
    counts[State.PENDING.value] += moved
    oldest = connection.scalar(
        select(MESSAGES.c.receive_time_ns)
        .where(UNSETTLED, (MESSAGES.c.state == State.PENDING) | lapsed)
        .order_by(MESSAGES.c.sequence)
        .limit(1)
    )
    return counts, oldest
