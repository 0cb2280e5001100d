"""Baseline: the schema ackbot had before it had migrations.

Exactly what `Base.metadata.create_all` made from services/store/models.py until then: the
messages table, its three indexes, and on PostgreSQL the sequence that numbers arrivals. A
database made that way, with no alembic_version table, is stamped with this revision on start
instead of running it. Written out here, not imported from models.py, so that it never changes.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_SEQUENCE = "messages_sequence_seq"
_UNSETTLED = sa.text("state IN ('PENDING', 'LEASED')")


def upgrade() -> None:
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.CreateSequence(sa.Sequence(_SEQUENCE)))
    op.create_table(
        "messages",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Sequence(_SEQUENCE),
            primary_key=True,
        ),
        sa.Column("id", sa.String(128), nullable=False, unique=True),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("create_time_ns", sa.BigInteger()),
        sa.Column("receive_time_ns", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reply_to", sa.String(128), sa.ForeignKey("messages.id"), unique=True),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("visible_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("process_time_ns", sa.BigInteger()),
        sa.CheckConstraint(
            "state IN ('PENDING', 'LEASED', 'PROCESSED', 'DEAD')", name="ck_messages_state"
        ),
    )
    op.create_index(
        "ix_messages_unsettled_sequence",
        "messages",
        ["sequence"],
        sqlite_where=_UNSETTLED,
        postgresql_where=_UNSETTLED,
    )
    op.create_index(
        "ix_messages_unsettled_visible_at",
        "messages",
        ["visible_at_ns"],
        sqlite_where=_UNSETTLED,
        postgresql_where=_UNSETTLED,
    )
    op.create_index("ix_messages_state_sequence", "messages", ["state", "sequence"])


def downgrade() -> None:
    op.drop_table("messages")
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.DropSequence(sa.Sequence(_SEQUENCE)))
