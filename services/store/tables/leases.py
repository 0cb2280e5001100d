"""The leases on the messages table: claiming, releasing, extending, handing back. The only
place a message goes DEAD: a claim or a hand-back that finds it out of attempts.

Whether a settle makes work is decided here, once (`_put_back`), and recorded in the
transaction's `Changes`: the repository announces it to the other stores from there, and the
manager wakes this store's streams from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, String, bindparam, case, cast, func, literal, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Update

from ackbot.store.errors import (
    LeaseExpired,
    LeaseNotCurrent,
    MessageDeleted,
    NotFound,
    StoreError,
)
from ackbot.store.ids import new_lease_token
from ackbot.store.models import UNSETTLED, State
from ackbot.store.tables.messages import IN_ITS_TURN, current_state, to_stored
from ackbot.store.tables.transaction import MESSAGES, Transaction
from ackbot.store.types import Cause, Delivery, Lease, ReleasedLease, StoredMessage

LEASED = MESSAGES.c.state == State.LEASED


@dataclass(frozen=True)
class Claim:
    limit: int
    lease_ns: int


@dataclass(frozen=True)
class Release:
    message_id: str
    lease_token: str
    reason: str
    retry_after_ns: int


@dataclass(frozen=True)
class Extension:
    message_id: str
    lease_token: str
    lease_ns: int


def _put_back(tx: Transaction, cause: Cause, row: Any, visible_at_ns: int) -> None:
    """Records a lease given back (`row` is the message now): PENDING again, deliverable at
    `visible_at_ns`, or DEAD, which lets the rest of its conversation go. Either is work for the
    streams, except a DEAD message outside a conversation."""
    tx.changed(cause, row)
    if row.state != State.DEAD:
        tx.work_at(visible_at_ns)
    elif row.conversation_id is not None:
        tx.work_at(tx.now_ns)


class LeasesTable:
    """`store_id` is recorded on every lease granted (messages.owner_store), so that the other
    stores on a shared database can hand them back if this one dies."""

    def __init__(self, *, max_attempts: int, store_id: str) -> None:
        self.max_attempts = max_attempts
        self._store_id = store_id
        self._claim_oldest = self._build_claim()

    def unless_exhausted(self, **live: Any) -> dict[str, Any]:
        """UPDATE values: `live` for a row with attempts left, DEAD for one without.

        A message already delivered max_attempts times goes to DEAD instead of out again, so
        a message that crashes every bot cannot loop; it keeps its last error, or says why.
        """
        exhausted = MESSAGES.c.delivery_attempts >= self.max_attempts
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

    # -- claiming ---------------------------------------------------------------------------

    def _build_claim(self) -> Update:
        """The claim, built once: it leases the `wanted` oldest deliverable messages."""
        # Unique per delivery without a round trip per row: a random part drawn once per
        # claim, then the row's sequence.
        token = bindparam("token_prefix", type_=String) + cast(MESSAGES.c.sequence, String)
        oldest_deliverable = (
            select(MESSAGES.c.sequence)
            .where(UNSETTLED, MESSAGES.c.visible_at_ns <= bindparam("now"), IN_ITS_TURN)
            .order_by(MESSAGES.c.sequence)
            .limit(bindparam("wanted"))
            .with_for_update(skip_locked=True)
        )
        leased = self.unless_exhausted(
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

    def claim(self, tx: Transaction, claim: Claim) -> list[Delivery]:
        """Leases up to `claim.limit` deliverable messages, oldest first; every claim counts an
        attempt, and a message out of attempts goes DEAD instead of out again."""
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
                tx.changed(Cause.DELIVERED, row)
                if row.state != State.DEAD:
                    deliveries.append(
                        Delivery(to_stored(row, None, tx.now_ns), row.lease_token, expiry)
                    )
            # Dead rows left the unsettled set without using up the limit: claim live ones in
            # their place, and the messages of their conversations they held back.
            dead = [row for row in rows if row.state == State.DEAD]
            if not dead or (len(rows) < wanted and not any(r.conversation_id for r in dead)):
                break
        return deliveries

    # -- settling a lease -------------------------------------------------------------------

    def release(self, tx: Transaction, release: Release) -> StoredMessage | StoreError:
        visible_at = tx.now_ns + release.retry_after_ns
        if release.reason:
            values = self.unless_exhausted(
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
        _put_back(tx, Cause.FAILED if release.reason else Cause.HANDED_BACK, row, visible_at)
        return to_stored(row, None, tx.now_ns)

    def extend(self, tx: Transaction, extension: Extension) -> StoredMessage | StoreError:
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
        return to_stored(row, None, tx.now_ns)

    @staticmethod
    def _update_leased(
        tx: Transaction, message_id: str, lease_token: str, values: dict[str, Any]
    ) -> Row[Any] | StoreError:
        """Applies `values` to the message if `lease_token` is its current lease; otherwise
        says why not (unknown id, deleted, or not that lease)."""
        row = (
            tx.connection.execute(
                update(MESSAGES)
                .where(
                    MESSAGES.c.id == message_id,
                    LEASED,
                    MESSAGES.c.lease_token == lease_token,
                )
                .values(values)
                .returning(*MESSAGES.c)
            )
        ).first()
        if row is not None:
            return row
        current = current_state(tx, message_id)
        if current is None:
            return NotFound(message_id)
        if current == State.DELETED:
            # Deleting it ended the lease: the delivery is settled, nothing to retry.
            return MessageDeleted(message_id)
        return LeaseNotCurrent(
            message_id,
            f"lease_token is not the current lease of message {message_id!r} (the message is "
            f"{current}; a lease ends when it expires or the message is settled)",
        )

    # -- handing leases back whose holder is gone -------------------------------------------

    def release_leases(self, tx: Transaction, leases: list[Lease]) -> list[ReleasedLease]:
        """The leases of a stream that ended."""
        held = tuple_(MESSAGES.c.id, MESSAGES.c.lease_token).in_(
            [(lease.message_id, lease.lease_token) for lease in leases]
        )
        return self.hand_back(tx, Cause.STREAM_ENDED, held)

    def hand_back(self, tx: Transaction, cause: Cause, *where: Any) -> list[ReleasedLease]:
        """Hands back the LEASED rows matching `where` whose holder is gone (a stream that
        ended, a store that died or stopped): deliverable at once, the attempt still counted
        (the delivery happened; it may have crashed the bot), DEAD if it was the last."""
        rows = (
            tx.connection.execute(
                update(MESSAGES)
                .where(LEASED, *where)
                .values(
                    self.unless_exhausted(
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
        for row in rows:
            _put_back(tx, cause, row, tx.now_ns)
        return [ReleasedLease(row.id, State(row.state), row.delivery_attempts) for row in rows]


def release_all_leases(connection: Connection) -> int:
    """Returns every lease to PENDING: for a store starting on a database only it uses (no
    stream is open yet, so nobody needs telling)."""
    result = connection.execute(
        update(MESSAGES)
        .where(LEASED)
        .values(state=State.PENDING, lease_token=None, owner_store=None, visible_at_ns=0)
    )
    return int(result.rowcount or 0)
