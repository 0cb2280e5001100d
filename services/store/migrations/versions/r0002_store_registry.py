"""The store registry: a `stores` table, and the store that granted each lease.

Several stores may share a PostgreSQL database; each registers itself and heartbeats, and the
others hand back the leases of one that died (services/store/registry.py). Made on SQLite as
well, where it stays empty and unused, so that both dialects have one schema.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "stores",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("listen_address", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("backend_pid", sa.Integer(), nullable=False),
        sa.Column("backend_start", sa.DateTime(timezone=True)),
    )
    # Nullable, no default: adding it rewrites no rows on either database.
    op.add_column("messages", sa.Column("owner_store", sa.String(64)))


def downgrade() -> None:
    op.drop_column("messages", "owner_store")
    op.drop_table("stores")
