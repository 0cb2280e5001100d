"""The one table: messages, keyed by id. Replies are rows too, pointing at their original."""

from __future__ import annotations

import enum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
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


# Written out as literal SQL, not bound parameters: the planners of SQLite and PostgreSQL use a
# partial index only when the query's WHERE visibly implies the index's, which a parameter hides.
UNSETTLED = text("state IN ('PENDING', 'LEASED')")
# PostgreSQL numbers arrivals from this; SQLite has no sequences and uses the rowid instead.
SEQUENCE = Sequence("messages_sequence_seq")


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

    __table_args__ = (
        CheckConstraint(
            "state IN ('PENDING', 'LEASED', 'PROCESSED', 'DEAD')", name="ck_messages_state"
        ),
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
    )
