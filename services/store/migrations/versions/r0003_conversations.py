"""Conversations: `messages.conversation_id`, and the indexes that list a conversation and that
keep its messages in order on delivery.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_IN_CONVERSATION = sa.text("conversation_id IS NOT NULL")
_UNSETTLED_IN_CONVERSATION = sa.text(
    "state IN ('PENDING', 'LEASED') AND conversation_id IS NOT NULL"
)


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no rows on either database, and the partial
    # indexes below start empty, since every existing message has no conversation.
    op.add_column("messages", sa.Column("conversation_id", sa.String(128)))
    op.create_index(
        "ix_messages_conversation_sequence",
        "messages",
        ["conversation_id", "sequence"],
        sqlite_where=_IN_CONVERSATION,
        postgresql_where=_IN_CONVERSATION,
    )
    op.create_index(
        "ix_messages_unsettled_conversation",
        "messages",
        ["conversation_id", "sequence"],
        sqlite_where=_UNSETTLED_IN_CONVERSATION,
        postgresql_where=_UNSETTLED_IN_CONVERSATION,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_unsettled_conversation", "messages")
    op.drop_index("ix_messages_conversation_sequence", "messages")
    op.drop_column("messages", "conversation_id")
