"""The tables at head (the migrations in migrations/versions/ make them): messages, keyed by
id, replies being rows too, pointing at their original; and the stores serving a shared
(PostgreSQL) database, for the registry."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Sequence,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ackbot.common.limits import MAX_AUTHOR_CHARS, MAX_ID_CHARS, MAX_LEASE_TOKEN_CHARS


class State(enum.StrEnum):
    PENDING = "PENDING"
    LEASED = "LEASED"
    PROCESSED = "PROCESSED"
    DEAD = "DEAD"
    # Waiting for a moderator (ApproveMessage makes it PENDING): never claimed.
    HELD = "HELD"
    # A tombstone (DeleteMessage, EraseAuthor): no author, text or error; final.
    DELETED = "DELETED"


# Written out as literal SQL, not bound parameters: the planners of SQLite and PostgreSQL use a
# partial index only when the query's WHERE visibly implies the index's, which a parameter hides.
UNSETTLED = text("state IN ('PENDING', 'LEASED')")
# The rows of conversations: only they are in the conversation indexes.
IN_CONVERSATION = text("conversation_id IS NOT NULL")
UNSETTLED_IN_CONVERSATION = text("state IN ('PENDING', 'LEASED') AND conversation_id IS NOT NULL")
# PostgreSQL numbers arrivals from this; SQLite has no sequences and uses the rowid instead.
SEQUENCE = Sequence("messages_sequence_seq")
# A store id: what ids.new_store_id makes, with room to spare.
MAX_STORE_ID_CHARS = 64


class Base(DeclarativeBase):
    pass


class MessageRow(Base):
    __tablename__ = "messages"

    # Arrival order, assigned by the database as the row is inserted: on SQLite an INTEGER
    # PRIMARY KEY is the rowid, which SQLite numbers MAX + 1 under its write lock; PostgreSQL
    # draws from SEQUENCE. Delivery follows it, never a client's clock. Lookups use `id` alone.
    sequence: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), SEQUENCE, primary_key=True
    )
    id: Mapped[str] = mapped_column(String(MAX_ID_CHARS), unique=True)
    author: Mapped[str] = mapped_column(String(MAX_AUTHOR_CHARS))
    text: Mapped[str] = mapped_column(Text)
    # Times are integer nanoseconds since the epoch: exact round trips of protobuf Timestamps,
    # and the same type on every database.
    create_time_ns: Mapped[int | None] = mapped_column(BigInteger)
    receive_time_ns: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[State] = mapped_column(String(16))
    # The unique constraint is what makes "one reply per message" true under any race.
    reply_to: Mapped[str | None] = mapped_column(
        String(MAX_ID_CHARS), ForeignKey("messages.id"), unique=True
    )
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The SQS visibility timeout / pgmq `vt` model: a PENDING or LEASED message may be delivered
    # once this time has passed. For LEASED it is the lease's expiry; for PENDING, the end of a
    # release's retry_after.
    visible_at_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(MAX_LEASE_TOKEN_CHARS))
    process_time_ns: Mapped[int | None] = mapped_column(BigInteger)
    # The store whose stream holds the lease, while LEASED on a shared (PostgreSQL) database:
    # when that store dies, the others find its leases by it (registry.py). No foreign key:
    # the registry deletes a dead store's row in the same transaction that hands its leases
    # back, and a key would make every claim lock the stores row it names.
    owner_store: Mapped[str | None] = mapped_column(String(MAX_STORE_ID_CHARS))
    # The thread a message belongs to (a reply: its original's). Messages of one conversation
    # are delivered one at a time in sequence order (tables/leases.py, the claim).
    conversation_id: Mapped[str | None] = mapped_column(String(MAX_ID_CHARS))

    __table_args__ = (
        CheckConstraint(
            "state IN ('PENDING', 'LEASED', 'PROCESSED', 'DEAD', 'HELD', 'DELETED')",
            name="ck_messages_state",
        ),
        # EraseAuthor finds an author's messages without a table scan.
        Index("ix_messages_author", "author"),
        # Listing by state (operators looking for DEAD messages) without a table scan.
        Index("ix_messages_state_sequence", "state", "sequence"),
        # Only unsettled rows are in these indexes, so claiming work costs the same with ten
        # or ten million processed messages in the table.
        Index(
            "ix_messages_unsettled_sequence",
            "sequence",
            sqlite_where=UNSETTLED,
            postgresql_where=UNSETTLED,
        ),
        Index(
            "ix_messages_unsettled_visible_at",
            "visible_at_ns",
            sqlite_where=UNSETTLED,
            postgresql_where=UNSETTLED,
        ),
        # A conversation's messages in order (ListMessages by conversation_id, the bot's
        # context); messages without a conversation cost it nothing.
        Index(
            "ix_messages_conversation_sequence",
            "conversation_id",
            "sequence",
            sqlite_where=IN_CONVERSATION,
            postgresql_where=IN_CONVERSATION,
        ),
        # The claim's question "is an earlier message of this conversation unsettled?": a probe
        # into the backlog of conversations alone, however long their processed history.
        Index(
            "ix_messages_unsettled_conversation",
            "conversation_id",
            "sequence",
            sqlite_where=UNSETTLED_IN_CONVERSATION,
            postgresql_where=UNSETTLED_IN_CONVERSATION,
        ),
    )


class StoreRow(Base):
    """A store serving a shared (PostgreSQL) database, alive while its heartbeat is fresh and
    its registered database session exists. Times are the database's clock, never a store's:
    machines may disagree about the time."""

    __tablename__ = "stores"

    id: Mapped[str] = mapped_column(String(MAX_STORE_ID_CHARS), primary_key=True)
    # Where it serves (HOST:PORT), for the logs of the stores that watch it.
    listen_address: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Its dedicated session: pg_backend_pid() and that backend's start, which tells a reused
    # pid from the one registered.
    backend_pid: Mapped[int] = mapped_column(Integer)
    backend_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
