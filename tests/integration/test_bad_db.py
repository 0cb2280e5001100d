"""The real `ackbot-store` given a --db it cannot use: one line saying what was wrong and what to
write instead, exit 2 for a URL it refuses (a flag error), 1 for a database it cannot open."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ackbot.testing import Service, child_env

# The console script the package installs, next to the interpreter that runs the tests.
STORE = str(Path(sys.executable).with_name("ackbot-store"))
RUN_TIMEOUT = 30


def run_store(db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORE, "--listen", "127.0.0.1:0", "--db", db],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=child_env(),
        cwd=cwd,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    described = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, described
    lines = result.stderr.splitlines()
    assert len(lines) == 1, described
    assert result.stdout == "", described
    return lines[0]


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        (
            "foo",
            "--db foo: not a database URL; write sqlite+aiosqlite:///PATH or "
            "postgresql+asyncpg://USER:PASSWORD@HOST/DB",
        ),
        (
            "sqlite:///x.db",
            "--db sqlite:///x.db: use sqlite+aiosqlite:///x.db (the store needs the async "
            "driver aiosqlite)",
        ),
        (
            # The password is masked in what is printed, the fix included.
            "postgresql://ana:secret@db.example/ackbot",
            "--db postgresql://ana:***@db.example/ackbot: use "
            "postgresql+asyncpg://ana:***@db.example/ackbot (the store needs the async driver "
            "asyncpg)",
        ),
        (
            "postgresql+psycopg2://ana@db.example/ackbot",
            "use postgresql+asyncpg://ana@db.example/ackbot",
        ),
        ("mysql+aiomysql://ana@db.example/ackbot", "mysql is not supported; use sqlite+aiosqlite"),
    ],
)
def test_a_url_the_store_cannot_use_is_one_line_and_exit_2(tmp_path, db, expected):
    result = run_store(db, tmp_path)
    line = one_line(result)
    assert result.returncode == 2, line
    assert line.startswith("ackbot-store: error: --db "), line
    assert expected in line
    assert "secret" not in line
    assert list(tmp_path.iterdir()) == []  # nothing created for a refused URL


def test_a_directory_as_the_database_is_one_line_naming_it_and_exit_1(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run_store(f"sqlite+aiosqlite:///{folder}", tmp_path)
    line = one_line(result)
    assert result.returncode == 1, line
    assert f"cannot open the database sqlite+aiosqlite:///{folder}: {folder} is a directory" in (
        line
    )


def test_a_database_under_a_file_is_one_line_naming_the_path_and_cause_and_exit_1(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    db_path = not_a_folder / "ackbot.db"
    result = run_store(f"sqlite+aiosqlite:///{db_path}", tmp_path)
    line = one_line(result)
    assert result.returncode == 1, line
    assert f"cannot open the database sqlite+aiosqlite:///{db_path}" in line
    assert f"{not_a_folder} is a file, not a folder" in line


def test_an_unreachable_postgresql_is_one_line_with_the_password_masked_and_exit_1(tmp_path):
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    result = run_store("postgresql+asyncpg://ana:secret@127.0.0.1:1/ackbot", tmp_path)
    line = one_line(result)
    assert result.returncode == 1, line
    assert "cannot open the database postgresql+asyncpg://ana:***@127.0.0.1:1/ackbot: " in line
    assert "secret" not in line


def test_the_ready_line_names_the_database_really_used(tmp_path):
    # A relative path is resolved against the store's folder: the line says which file that is.
    store = Service(
        "store",
        [STORE, "--listen", "127.0.0.1:0", "--db", "sqlite+aiosqlite:///./data/here.db"],
        tmp_path / "store.log",
        child_env(),
    ).start()
    try:
        store.wait_ready()
        assert f"(database sqlite+aiosqlite:///{tmp_path.resolve()}/data/here.db;" in (
            store.log_text()
        ), store.describe()
        assert store.terminate() == 0, store.describe()
    finally:
        store.cleanup()
