"""Deleting and holding (issue 19): the states HELD and DELETED, and an index on `author` for
EraseAuthor.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_OLD_STATES = "state IN ('PENDING', 'LEASED', 'PROCESSED', 'DEAD')"
_NEW_STATES = "state IN ('PENDING', 'LEASED', 'PROCESSED', 'DEAD', 'HELD', 'DELETED')"


def _replace_state_check(condition: str) -> None:
    # SQLite cannot alter a constraint: batch mode copies the table into a new one with the
    # new CHECK (rows, rowids and indexes kept) in the migration's transaction. PostgreSQL
    # swaps the constraint in place; it checks the existing rows once, under the same lock.
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("ck_messages_state", type_="check")
        batch.create_check_constraint("ck_messages_state", sa.text(condition))


def upgrade() -> None:
    _replace_state_check(_NEW_STATES)
    op.create_index("ix_messages_author", "messages", ["author"])


def downgrade() -> None:
    # What the old schema cannot hold goes: tombstones are removed (their ids become free), and
    # held messages become PENDING, so that nothing waits for an approval an older ackbot
    # cannot give.
    op.execute(sa.text("DELETE FROM messages WHERE state = 'DELETED' AND reply_to IS NOT NULL"))
    op.execute(
        sa.text(
            "UPDATE messages SET reply_to = NULL WHERE reply_to IN "
            "(SELECT id FROM messages WHERE state = 'DELETED')"
        )
    )
    op.execute(sa.text("DELETE FROM messages WHERE state = 'DELETED'"))
    op.execute(sa.text("UPDATE messages SET state = 'PENDING' WHERE state = 'HELD'"))
    op.drop_index("ix_messages_author", "messages")
    _replace_state_check(_OLD_STATES)
