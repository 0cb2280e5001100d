"""Domain errors raised by validation and the repository; the servicer maps them to gRPC codes.

Nothing below the servicer knows about gRPC, and no database driver error escapes the database
module: it wraps them in StorageUnavailable or StorageFull.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# The `domain` of the google.rpc.ErrorInfo that the servicer attaches to an error with a reason.
ERROR_DOMAIN = "ackbot.dev"


class StoreError(Exception):
    """Base of the errors a caller can act on.

    `reason` is the machine-readable google.rpc.ErrorInfo reason a client tells errors of one
    status code apart by (UPPER_SNAKE_CASE, AIP-193): part of the contract, never renamed.
    None where the status code and its other details say it all (BadRequest for
    INVALID_ARGUMENT). `metadata` goes with it (the message id, for errors about a message).
    """

    reason: ClassVar[str | None] = None

    @property
    def metadata(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(StoreError):
    """One or more request fields break their rule."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class NotFound(StoreError):
    """No message has this id."""

    reason = "MESSAGE_NOT_FOUND"

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"message {message_id!r} not found")

    @property
    def metadata(self) -> dict[str, str]:
        return {"message_id": self.message_id}


class MessageDeleted(NotFound):
    """The message was deleted (DeleteMessage, EraseAuthor): only its tombstone is left. A bot
    that gets this for a delivery drops it: the delivery is settled."""

    reason = "MESSAGE_DELETED"

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.args = (f"message {message_id!r} was deleted",)


class AlreadyExists(StoreError):
    """The id is taken by a message with different content."""

    reason = "ID_TAKEN"

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"message {message_id!r} already exists with a different author or text")

    @property
    def metadata(self) -> dict[str, str]:
        return {"message_id": self.message_id}


class DeletedIdTaken(AlreadyExists):
    """A create with the id of a deleted message: its tombstone keeps the id taken, so that a
    retried create cannot bring back what was deleted."""

    reason = "MESSAGE_DELETED"

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.args = (
            f"message {message_id!r} was deleted; its id cannot be used again "
            "until its tombstone is removed",
        )


class FailedPrecondition(StoreError):
    """The message is not in the state the call needs; the subclasses say which way."""

    reason = "FAILED_PRECONDITION"

    def __init__(self, message_id: str, detail: str) -> None:
        self.message_id = message_id
        super().__init__(detail)

    @property
    def metadata(self) -> dict[str, str]:
        return {"message_id": self.message_id}


class LeaseNotCurrent(FailedPrecondition):
    """The lease token is not the message's current lease (it moved on, or was settled)."""

    reason = "LEASE_NOT_CURRENT"


class LeaseExpired(FailedPrecondition):
    """The lease is the current one but has expired: the message may be delivered again."""

    reason = "LEASE_EXPIRED"


class ContextStale(FailedPrecondition):
    """MarkProcessed with a context_sequence older than a newer original of the conversation:
    the reply was written without seeing it."""

    reason = "CONTEXT_STALE"

    def __init__(self, message_id: str, newest_message_id: str, context_sequence: int) -> None:
        self.newest_message_id = newest_message_id
        super().__init__(
            message_id,
            f"the reply to message {message_id!r} was written from the conversation as of "
            f"sequence {context_sequence}; message {newest_message_id!r} came after it",
        )

    @property
    def metadata(self) -> dict[str, str]:
        return {"message_id": self.message_id, "newest_message_id": self.newest_message_id}


class NotDead(FailedPrecondition):
    """RequeueMessage of a message that is not DEAD."""

    reason = "NOT_DEAD"


class MessageHeld(FailedPrecondition):
    """MarkProcessed of a message HELD for moderation: it was never delivered."""

    reason = "MESSAGE_HELD"


class NotHeld(FailedPrecondition):
    """ApproveMessage of a message that is not HELD."""

    reason = "NOT_HELD"


class StorageUnavailable(StoreError):
    """The database cannot be reached, or stayed locked past the deadline; retry with backoff."""

    reason = "STORAGE_UNAVAILABLE"

    def __init__(self, detail: str = "database unavailable") -> None:
        super().__init__(detail)


class ShuttingDown(StorageUnavailable):
    """The store is stopping: retry, with backoff, on another store or once it is back."""

    reason = "SHUTTING_DOWN"

    def __init__(self, detail: str = "the store is shutting down") -> None:
        super().__init__(detail)


class StorageFull(StoreError):
    """The database cannot grow (disk or page limit full)."""

    reason = "STORAGE_FULL"

    def __init__(self, detail: str = "database is full") -> None:
        super().__init__(detail)


class WatchFellBehind(StoreError):
    """A WatchMessages client reads slower than the store changes messages: its watch ends
    (RESOURCE_EXHAUSTED) rather than hold an ever longer list of changes."""

    reason = "WATCH_FELL_BEHIND"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this watch fell more than {limit} changes behind; "
            "watch again from the last sequence seen"
        )


class CannotOpenDatabase(StoreError):
    """The store could not open its database at start; the message names it and the cause."""


class SchemaTooNew(StoreError):
    """The database's schema is at a revision this ackbot does not know: a newer one made it."""


class DeclaredDead(StoreError):
    """Another store declared this one dead (its registration is gone): it must stop serving,
    since the leases it granted may be with other stores by now."""
