"""`ackbot-store migrate` (current, upgrade, downgrade) and `--no-migrate`, as an operator runs
them, on SQLite and on PostgreSQL: a store started with --no-migrate serves a database at its
revision and refuses, in one line naming the command to run, one that is not."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from ackbot.store.migrations import head_revision
from ackbot.testing import child_env, store_service
from tests.support.postgres import fresh_database

HEAD = head_revision()
TIMEOUT = 60


def migrate(db_url: str, *step: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ackbot.store", "migrate", "--db", db_url, *step],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=child_env(),
        check=False,
    )


async def amigrate(db_url: str, *step: str) -> str:
    result = await asyncio.to_thread(migrate, db_url, *step)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.strip()


@contextlib.asynccontextmanager
async def database(kind: str, tmp_path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/migrated.db"
        return
    async with fresh_database() as url:
        yield url


@pytest.mark.parametrize(
    "kind",
    ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres])],
)
async def test_migrate_shows_upgrades_and_downgrades_and_no_migrate_checks(kind, tmp_path):
    async with database(kind, tmp_path) as url:
        assert await amigrate(url, "current") == (
            f"revision (none: a new database) (this ackbot's is {HEAD})"
        )
        assert await amigrate(url, "upgrade") == f"upgraded from revision (none) to {HEAD}"
        assert await amigrate(url, "current") == f"revision {HEAD} (current)"
        assert (
            await amigrate(url, "downgrade", "0002") == f"downgraded from revision {HEAD} to 0002"
        )
        assert await amigrate(url, "current") == f"revision 0002 (this ackbot's is {HEAD})"

        # Behind: a store that must not migrate refuses, and leaves the schema as it was.
        refused = store_service(
            tmp_path, name="no-migrate", args=["--db", url, "--no-migrate"]
        ).expect_exit(1)
        try:
            code = await asyncio.to_thread(refused.start().proc.wait, TIMEOUT)
        finally:
            refused.cleanup()
        assert code == 1, refused.describe()
        errors = [line for line in refused.log_text().splitlines() if " ERROR " in line]
        assert len(errors) == 1, refused.describe()
        assert f"at revision 0002, and this ackbot needs {HEAD}" in errors[0]
        assert "ackbot-store migrate upgrade" in errors[0]
        assert await amigrate(url, "current") == f"revision 0002 (this ackbot's is {HEAD})"

        assert await amigrate(url, "upgrade") == f"upgraded from revision 0002 to {HEAD}"
        serving = store_service(tmp_path, name="checked", args=["--db", url, "--no-migrate"])
        try:
            await serving.astart()
            assert "schema upgraded" not in serving.log_text()
        finally:
            serving.cleanup()


def test_an_unknown_revision_is_a_usage_error(tmp_path):
    result = migrate(f"sqlite+aiosqlite:///{tmp_path}/x.db", "downgrade", "0042")
    assert result.returncode == 2
    assert "no revision '0042': the known are 0001, 0002, 0003" in result.stderr
    assert not (tmp_path / "x.db").exists()
