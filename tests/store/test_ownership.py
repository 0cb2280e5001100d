"""One store per SQLite file: which URLs name a file, and the lock's rules within one process
(tests/integration/test_one_owner.py runs real stores, kill -9 included)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ackbot.store.ownership import DatabaseInUse, FileOwnership, claim_database, sqlite_file


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file::memory:?uri=true",
        "sqlite+aiosqlite:///file:shared?mode=memory&cache=shared&uri=true",
        "postgresql+asyncpg://user@localhost/ackbot",
    ],
)
def test_no_file_no_lock(url: str) -> None:
    assert sqlite_file(url) is None
    assert claim_database(url, "127.0.0.1:0") is None


def test_every_path_to_a_file_names_the_same_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    expected = (tmp_path / "real" / "a.db").resolve()

    assert sqlite_file("sqlite+aiosqlite:///./real/a.db") == expected
    assert sqlite_file(f"sqlite+aiosqlite:///{tmp_path}/link/a.db") == expected
    assert sqlite_file(f"sqlite+aiosqlite:///file:{tmp_path}/real/a.db?uri=true") == expected


def test_a_second_claim_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/data/a.db"
    first = claim_database(url, "127.0.0.1:0")
    assert first is not None
    try:
        # The folder is made for the lock; the database file itself is not touched.
        assert not (tmp_path / "data" / "a.db").exists()
        with pytest.raises(DatabaseInUse) as refused:
            claim_database(url, "127.0.0.1:0")
        assert str(refused.value) == (
            f"{tmp_path}/data/a.db is in use by another store (pid {os.getpid()}, starting, "
            "--listen 127.0.0.1:0); one store per SQLite file: stop that one or give this one "
            "another --db"
        )

        first.announce("127.0.0.1:6001")
        with pytest.raises(
            DatabaseInUse, match=rf"\(pid {os.getpid()}, listening on 127.0.0.1:6001\)"
        ):
            claim_database(url, "127.0.0.1:0")
    finally:
        first.release()
    first.release()  # twice is harmless

    again = claim_database(url, "127.0.0.1:0")
    assert isinstance(again, FileOwnership)
    again.release()
