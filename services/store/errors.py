"""Domain errors raised by validation and the repository; the servicer maps them to gRPC codes.

Nothing below the servicer knows about gRPC, and no database driver error escapes the database
module: it wraps them in StorageUnavailable or StorageFull.
"""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """Base of the errors a caller can act on."""


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

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"message {message_id!r} not found")


class AlreadyExists(StoreError):
    """The id is taken by a message with different content."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"message {message_id!r} already exists with a different author or text")


class FailedPrecondition(StoreError):
    """The message is not in the state the call needs (wrong lease, not DEAD, ...)."""


class StorageUnavailable(StoreError):
    """The database cannot be reached, or stayed locked past the deadline; retry with backoff."""

    def __init__(self, detail: str = "database unavailable") -> None:
        super().__init__(detail)


class StorageFull(StoreError):
    """The database cannot grow (disk or page limit full)."""

    def __init__(self, detail: str = "database is full") -> None:
        super().__init__(detail)


class CannotOpenDatabase(StoreError):
    """The store could not open its database at start; the message names it and the cause."""


class SchemaTooNew(StoreError):
    """The database's schema is at a revision this ackbot does not know: a newer one made it."""


class DeclaredDead(StoreError):
    """Another store declared this one dead (its registration is gone): it must stop serving,
    since the leases it granted may be with other stores by now."""
