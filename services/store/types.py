"""The store's domain types: what the tables answer with and what the manager and the servicer
pass around. Plain frozen dataclasses, no SQL and no gRPC, so that a room that only needs the
shapes imports nothing else.

`Changes` is the one record of what a committed write transaction changed. The tables fill it
in as they write (tables/transaction.py); the repository announces its work to the other stores
from it before the commit, and hands it to the manager after (`MessageManager._committed`),
which turns it into wake-ups, watch events, metrics and log lines. A new write or a new state
adds a `Cause` and says there what it means; nothing else has to learn it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ackbot.store.models import State


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
    # HELD for moderation instead of PENDING; None: the store's --hold-new-messages decides
    # (MessageManager resolves it before the tables see it).
    hold: bool | None = None


@dataclass(frozen=True)
class CreateResult:
    message: StoredMessage
    already_existed: bool


@dataclass(frozen=True)
class DeleteResult:
    """DeleteMessage: the tombstone, whether it was one already, and how many messages this
    call deleted (the message and its reply)."""

    message: StoredMessage
    already_deleted: bool
    deleted_count: int


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
    # False: not registered at all, yet it holds leases (see tables/stores.py)
    registered: bool = True


@dataclass(frozen=True)
class Reaped:
    """A dead store whose leases were handed back. `finished`: its registration is deleted;
    otherwise a lease of it was locked by another transaction, and a later reap goes on."""

    store: DeadStore
    released: list[ReleasedLease]
    finished: bool = False


@dataclass(frozen=True)
class StreamStats:
    consumer: str
    max_in_flight: int
    # Unsettled deliveries, lapsed leases not yet answered for included.
    in_flight: int
    lease_ns: int


@dataclass(frozen=True)
class StoreStats:
    """Messages by state (lapsed leases as PENDING), the oldest PENDING's receive time, and
    this store's open streams, read at `read_ns`."""

    counts: Mapping[str, int]
    oldest_pending_ns: int | None
    streams: list[StreamStats]
    store_id: str
    read_ns: int


class Cause(enum.Enum):
    """Which write changed a message. The value is the redelivery metric's cause where the
    write can put a message back to PENDING (see metrics.py)."""

    CREATED = "created"  # a create, or a reply born PROCESSED
    DELIVERED = "delivered"  # a claim leased it (or found it out of attempts: DEAD)
    PROCESSED = "processed"  # MarkProcessed
    FAILED = "failed"  # ReleaseMessage with a reason
    HANDED_BACK = "handed_back"  # ReleaseMessage without one (never started)
    STREAM_ENDED = "stream_ended"  # its stream ended while it held the lease
    STORE_DIED = "store_died"  # a reaper handed back a dead store's lease
    STORE_STOPPED = "store_stopped"  # its store deregistered on the way out
    REQUEUED = "requeued"  # RequeueMessage took it out of DEAD
    DELETED = "deleted"  # DeleteMessage or EraseAuthor left its tombstone
    APPROVED = "approved"  # ApproveMessage took it out of HELD


# Causes that hand a lease back: a message they leave PENDING is a redelivery by that cause.
REDELIVERY_CAUSES = frozenset(
    {Cause.FAILED, Cause.HANDED_BACK, Cause.STREAM_ENDED, Cause.STORE_DIED}
)


@dataclass(frozen=True)
class MessageChange:
    """One message whose row a write changed, as it is after the write."""

    message_id: str
    cause: Cause
    state: State
    attempts: int = 0
    last_error: str | None = None
    # Only for PROCESSED: the metrics' whole wait, seen from the store; the reply stored.
    receive_time_ns: int = 0
    reply_id: str | None = None
    # Only for CREATED: the log line of a new message names it.
    sequence: int = 0
    # Only for DELETED: the lease the message was under, if it was LEASED (its stream's slot
    # is freed as by a settle).
    lease_token: str | None = None


@dataclass(frozen=True)
class Removed:
    """What one batch of a purge or the retention sweep removed for good (tables/removal.py):
    rows by their state (replies by theirs), who asked (`why`: the metrics' label), and whether
    the batch was full (then more may be left)."""

    by_state: Mapping[str, int]
    why: str
    full: bool = False

    @property
    def count(self) -> int:
        return sum(self.by_state.values())


@dataclass
class Changes:
    """What one write transaction changed: filled in while it runs, told once it committed.

    Whether a write makes work for the streams is decided here, once, by the tables: a create
    that stored a PENDING message (`created_work`), or a message put back or let go
    (`work_at_ns`: when it becomes deliverable, now or after a retry_after). Both are announced
    to the other stores; this store's streams are woken for `work_at_ns` by the manager, and
    for a create by its claim-on-create rule (manager._create).
    """

    messages: list[MessageChange] = field(default_factory=list)
    created_work: bool = False
    work_at_ns: set[int] = field(default_factory=set)
    # Rows removed for good: counted, never shown to watchers (their ids are free again).
    removed: list[Removed] = field(default_factory=list)

    @property
    def made_work(self) -> bool:
        return self.created_work or bool(self.work_at_ns)
