"""check_db_url: which --db values the store runs on, and the fix it suggests for the others."""

from __future__ import annotations

import pytest

from ackbot.store.config import check_db_url, load_config


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./data/ackbot.db",
        "sqlite+aiosqlite:////abs/path.db",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://u:p@h:5432/db?ssl=require",
    ],
)
def test_urls_the_store_runs_on_pass(url):
    assert check_db_url(url) is None


@pytest.mark.parametrize(
    ("url", "suggested"),
    [
        ("sqlite+pysqlite:///x.db", "use sqlite+aiosqlite:///x.db "),
        ("postgres://u@h/db", "use postgresql+asyncpg://u@h/db "),
        ("postgresql+psycopg://u:pw@h/db", "use postgresql+asyncpg://u:***@h/db "),
        ("oracle://u@h/db", "oracle is not supported"),
        ("", "not a database URL"),
    ],
)
def test_other_urls_get_one_line_with_what_to_write(url, suggested):
    problem = check_db_url(url)
    assert problem is not None
    assert suggested in problem
    assert "\n" not in problem
    assert "pw" not in problem


def test_a_bad_url_from_the_environment_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:
        load_config([], {"ACKBOT_STORE_DB": "sqlite:///x.db"})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "ackbot-store: error: --db sqlite:///x.db: use sqlite+aiosqlite:///x.db "
        "(the store needs the async driver aiosqlite)"
    ]
