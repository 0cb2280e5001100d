"""Two or more stores on one PostgreSQL database. The in-process pairs (test_store_pair.py) build
their stores from the store unit tests' fixtures, reused as they are; the rest start real store
and bot processes (tests/support/fixtures.py)."""

from __future__ import annotations

from tests.store.conftest import (  # noqa: F401 (fixtures, found by name)
    clock,
    engine,
    make_repo,
    postgres_url,
)
