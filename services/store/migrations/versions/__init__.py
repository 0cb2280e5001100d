"""The revisions, oldest first by `down_revision`; Alembic reads this folder by path."""
