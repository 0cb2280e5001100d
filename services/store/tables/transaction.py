"""An open write transaction, shared by every request of one group commit, and what it changed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, String, bindparam, func, select
from sqlalchemy.engine import Connection

from ackbot.store.models import Base, MessageRow, State, StoreRow
from ackbot.store.types import Cause, Changes, MessageChange

MESSAGES = Base.metadata.tables[MessageRow.__tablename__]
STORES = Base.metadata.tables[StoreRow.__tablename__]

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


class Transaction:
    """An open write transaction at `now_ns` (the store's clock, read once for all of it).

    Every write records in `changes` the messages it changed and the work it made; the
    repository announces that work to the other stores just before the commit, and hands the
    record to the manager once the commit is done (a watcher told earlier would read the message
    as it was). An error rolls the transaction back, and its record is dropped with it.

    `insert_turn_ms`: the lock timeout of the insert turn where the database needs one
    (PostgreSQL, see Database.inserts_take_turns), None where it does not.
    """

    def __init__(self, connection: Connection, now_ns: int, insert_turn_ms: int | None) -> None:
        self.connection = connection
        self.now_ns = now_ns
        self.changes = Changes()
        self._insert_turn_ms = insert_turn_ms
        self._has_insert_turn = False

    def changed(
        self,
        cause: Cause,
        row: Any,
        *,
        receive_time_ns: int = 0,
        reply_id: str | None = None,
        sequence: int = 0,
        lease_token: str | None = None,
    ) -> None:
        """Records that `cause` changed a message, now as `row` (a row of MESSAGES, or anything
        with its id, state, delivery_attempts and last_error) says."""
        self.changes.messages.append(
            MessageChange(
                row.id,
                cause,
                State(row.state),
                row.delivery_attempts,
                row.last_error,
                receive_time_ns,
                reply_id,
                sequence,
                lease_token,
            )
        )

    def work_at(self, at_ns: int) -> None:
        """Messages become deliverable at `at_ns` (now, or a retry_after's end)."""
        self.changes.work_at_ns.add(max(at_ns, self.now_ns))

    def take_insert_turn(self) -> None:
        """Waits for the insert turn where the database needs it; held until the transaction ends.

        nextval() then runs under the lock, and PostgreSQL releases it only after the commit
        is visible: a reader that sees a row already sees every row with a lower sequence that
        will ever commit (with the sequence's CACHE 1, the default: a cache would hand each
        session numbers drawn earlier). Taken before the transaction's first row lock
        (inserting writes run first in a group commit, and marks take it before their UPDATE):
        a transaction waiting for the turn never holds a row that the holder may need.
        """
        if self._has_insert_turn or self._insert_turn_ms is None:
            return
        self.connection.execute(
            _TAKE_INSERT_TURN,
            {"lock_timeout_ms": str(self._insert_turn_ms), "key": INSERT_TURN_KEY},
        )
        self._has_insert_turn = True
