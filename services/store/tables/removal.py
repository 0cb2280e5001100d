"""Removing settled messages for good: retention (sweeper.py) and PurgeMessages.

Unlike a delete, nothing stays: the rows go, and their ids are free again. One call removes one
batch, in the caller's transaction, so a store killed mid-purge leaves whole batches removed and
the rest as it was: never an original without its reply, or a reply without its original.

What the queries count on (beside what tables/__init__.py says):
- A reply points at its original (`reply_to`, a foreign key), so an original's reply goes in the
  same transaction, before it, whatever its state. A PROCESSED reply is never a candidate
  itself (it goes with its original); a reply's tombstone is, as every tombstone is.
- On PostgreSQL several stores sweep at once: each batch takes its originals with FOR UPDATE
  SKIP LOCKED, so two stores never take the same rows, and a row another transaction is
  changing (a late MarkProcessed of a DEAD message) is skipped, not waited for. A reply is
  locked by its DELETE; only a delete of that very reply can hold it, for one short batch.
- On SQLite the single writer makes the SELECT and the DELETEs one step (FOR UPDATE renders as
  nothing there).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select

from ackbot.store.tables.transaction import MESSAGES, Transaction
from ackbot.store.types import Removed

# The states whose messages may be removed: settled for good. Strings, as stored.
REMOVABLE_STATES = ("PROCESSED", "DEAD", "DELETED")
# Rows per batch: a few milliseconds of deletes, so the writers that queue behind a batch (all
# of them on SQLite) wait about as long as for one group commit.
BATCH_ROWS = 256

# The oldest candidates of one state, by arrival. Ordered by sequence over
# ix_messages_state_sequence, which stops at the batch's end while old rows are left.
_OLDEST = (
    select(MESSAGES.c.id)
    .where(MESSAGES.c.state == bindparam("state"), MESSAGES.c.receive_time_ns < bindparam("cutoff"))
    .order_by(MESSAGES.c.sequence)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# A PROCESSED reply goes with its original, never alone: the original stays answered. A reply
# deleted alone is a tombstone like any other (nothing points at a reply).
_OLDEST_ORIGINALS = _OLDEST.where(MESSAGES.c.reply_to.is_(None))
# The replies that go with their originals, whatever their state (a PROCESSED original's reply
# may itself have been deleted alone: a DELETED tombstone).
_REMOVE_REPLIES = (
    delete(MESSAGES)
    .where(MESSAGES.c.reply_to.in_(bindparam("ids", expanding=True)))
    .returning(MESSAGES.c.state)
)
_REMOVE = (
    delete(MESSAGES)
    .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
    .returning(MESSAGES.c.state)
)


@dataclass(frozen=True)
class Removal:
    """One batch to remove: messages in `state` received before `cutoff_ns` (and their replies),
    at most `limit` originals; `why` names who asked (the metrics' label)."""

    state: str
    cutoff_ns: int
    why: str
    limit: int = BATCH_ROWS


def remove_batch(tx: Transaction, removal: Removal) -> Removed:
    """Removes one batch for good; an empty one when nothing old is left (or every old row is
    another store's batch right now)."""
    if removal.state not in REMOVABLE_STATES:
        # The caller's rules keep this out; a PENDING or LEASED message is never removed.
        raise ValueError(f"{removal.state} messages are not settled; they cannot be removed")
    candidates = _OLDEST if removal.state == "DELETED" else _OLDEST_ORIGINALS
    ids = list(
        tx.connection.scalars(
            candidates,
            {"state": removal.state, "cutoff": removal.cutoff_ns, "limit": removal.limit},
        )
    )
    full = len(ids) >= removal.limit
    if not ids:
        return Removed({}, removal.why, full)
    by_state: dict[str, int] = {}
    for statement in (_REMOVE_REPLIES, _REMOVE):
        for state in tx.connection.scalars(statement, {"ids": ids}):
            by_state[state] = by_state.get(state, 0) + 1
    removed = Removed(by_state, removal.why, full)
    tx.changes.removed.append(removed)
    return removed
