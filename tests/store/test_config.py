"""Store settings from flags and ACKBOT_STORE_* variables; a flag wins; bad values exit 2."""

from __future__ import annotations

import pytest

from ackbot.common.limits import Limits
from ackbot.store.config import DEFAULT_DB_URL, StoreConfig, load_config


def test_defaults():
    config = load_config([], {})
    assert config == StoreConfig()
    assert config.sqlite_synchronous == "FULL"  # the default survives a power cut
    assert config.db_url == DEFAULT_DB_URL
    assert config.limits == Limits()


def test_flags():
    config = load_config(
        [
            "--listen=0.0.0.0:0",
            "--db=sqlite+aiosqlite:///x.db",
            "--log-level=debug",
            "--max-attempts=7",
            "--default-lease-seconds=2.5",
            "--grace-seconds=1",
            "--lock-timeout-seconds=0.5",
            "--sqlite-synchronous=normal",
            "--max-text-bytes=100",
            "--max-request-bytes=1000",
            "--wake-poll-seconds=0.5",
            "--listener-check-seconds=2",
        ],
        {},
    )
    assert config.listen == "0.0.0.0:0"
    assert config.db_url == "sqlite+aiosqlite:///x.db"
    assert config.log_level == "DEBUG"
    assert config.max_attempts == 7
    assert config.default_lease_seconds == 2.5
    assert config.grace_seconds == 1.0
    assert config.lock_timeout_seconds == 0.5
    assert config.sqlite_synchronous == "NORMAL"
    assert config.limits.max_text_bytes == 100
    assert config.limits.max_request_bytes == 1000
    assert config.limits.max_id_chars == Limits().max_id_chars
    assert config.wake_poll_seconds == 0.5
    assert config.listener_check_seconds == 2.0


ENV = {
    "ACKBOT_STORE_LISTEN": "[::1]:6000",
    "ACKBOT_STORE_DB": "postgresql+asyncpg://u@h/db",
    "ACKBOT_STORE_LOG_LEVEL": "warning",
    "ACKBOT_STORE_MAX_ATTEMPTS": "9",
    "ACKBOT_STORE_DEFAULT_LEASE_SECONDS": "30",
    "ACKBOT_STORE_GRACE_SECONDS": "2",
    "ACKBOT_STORE_LOCK_TIMEOUT_SECONDS": "3",
    "ACKBOT_STORE_MAX_TEXT_BYTES": "200",
    "ACKBOT_STORE_MAX_REQUEST_BYTES": "2000",
    "ACKBOT_STORE_WAKE_POLL_SECONDS": "30",
    "ACKBOT_STORE_LISTENER_CHECK_SECONDS": "3",
}


def test_environment():
    config = load_config([], ENV)
    assert config.listen == "[::1]:6000"
    assert config.db_url == "postgresql+asyncpg://u@h/db"
    assert config.log_level == "WARNING"
    assert config.max_attempts == 9
    assert config.default_lease_seconds == 30.0
    assert config.grace_seconds == 2.0
    assert config.lock_timeout_seconds == 3.0
    assert config.limits.max_text_bytes == 200
    assert config.limits.max_request_bytes == 2000
    assert config.wake_poll_seconds == 30.0
    assert config.listener_check_seconds == 3.0


def test_a_flag_beats_the_environment():
    config = load_config(["--max-attempts", "2", "--db", "sqlite+aiosqlite:///flag.db"], ENV)
    assert config.max_attempts == 2
    assert config.db_url == "sqlite+aiosqlite:///flag.db"
    assert config.listen == "[::1]:6000"  # the rest still from the environment


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("ACKBOT_STORE_MAX_ATTEMPTS", "4")
    assert load_config([]).max_attempts == 4


def test_config_is_frozen():
    config = load_config([], {})
    with pytest.raises(AttributeError):
        config.max_attempts = 1  # type: ignore[misc]


BAD_VALUES = [
    ("--listen", "LISTEN", "nohostport"),
    ("--listen", "LISTEN", "host:99999"),
    ("--log-level", "LOG_LEVEL", "chatty"),
    ("--max-attempts", "MAX_ATTEMPTS", "0"),
    ("--max-attempts", "MAX_ATTEMPTS", "five"),
    ("--max-attempts", "MAX_ATTEMPTS", ""),
    ("--default-lease-seconds", "DEFAULT_LEASE_SECONDS", "0"),
    ("--default-lease-seconds", "DEFAULT_LEASE_SECONDS", "-1"),
    ("--default-lease-seconds", "DEFAULT_LEASE_SECONDS", "nan"),
    ("--grace-seconds", "GRACE_SECONDS", "soon"),
    ("--lock-timeout-seconds", "LOCK_TIMEOUT_SECONDS", "0"),
    ("--sqlite-synchronous", "SQLITE_SYNCHRONOUS", "OFF"),
    ("--max-text-bytes", "MAX_TEXT_BYTES", "-5"),
    ("--max-request-bytes", "MAX_REQUEST_BYTES", "1.5"),
    ("--heartbeat-seconds", "HEARTBEAT_SECONDS", "0"),
    ("--heartbeat-seconds", "HEARTBEAT_SECONDS", "61"),
    ("--dead-after-seconds", "DEAD_AFTER_SECONDS", "0"),
    ("--dead-after-seconds", "DEAD_AFTER_SECONDS", "inf"),
    ("--wake-poll-seconds", "WAKE_POLL_SECONDS", "0"),
    ("--listener-check-seconds", "LISTENER_CHECK_SECONDS", "-1"),
]


@pytest.mark.parametrize(("flag", "env", "value"), BAD_VALUES)
def test_a_bad_flag_exits_2_naming_the_flag(flag, env, value, capsys):
    with pytest.raises(SystemExit) as caught:
        load_config([f"{flag}={value}"], {})
    assert caught.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "env", "value"), [bad for bad in BAD_VALUES if bad[2]])
def test_a_bad_environment_value_exits_2_naming_the_flag(flag, env, value, capsys):
    with pytest.raises(SystemExit) as caught:
        load_config([], {f"ACKBOT_STORE_{env}": value})
    assert caught.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_an_empty_environment_value_counts_as_unset():
    assert load_config([], {"ACKBOT_STORE_MAX_ATTEMPTS": ""}).max_attempts == 5


def test_a_good_flag_overrides_a_bad_environment_value():
    assert (
        load_config(["--max-attempts=3"], {"ACKBOT_STORE_MAX_ATTEMPTS": "zero"}).max_attempts == 3
    )


@pytest.mark.parametrize(
    "flag",
    [
        "--default-lease-seconds",
        "--lock-timeout-seconds",
        "--wake-poll-seconds",
        "--listener-check-seconds",
    ],
)
def test_infinite_seconds_are_rejected(flag, capsys):
    # inf passes "> 0" but cannot be used: int(inf * 1e9) raises OverflowError when a stream
    # opens (default lease) or when SQLite's busy_timeout is set on every new connection.
    with pytest.raises(SystemExit) as caught:
        load_config([f"{flag}=inf"], {})
    assert caught.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_the_store_registry_settings():
    defaults = load_config([], {})
    assert (defaults.heartbeat_seconds, defaults.dead_after_seconds) == (1.0, 3.0)
    config = load_config(["--heartbeat-seconds=0.5", "--dead-after-seconds=1"], {})
    assert (config.heartbeat_seconds, config.dead_after_seconds) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--dead-after-seconds=1.5"], {}),
        (["--heartbeat-seconds=2"], {}),
        ([], {"ACKBOT_STORE_HEARTBEAT_SECONDS": "5", "ACKBOT_STORE_DEAD_AFTER_SECONDS": "9"}),
    ],
)
def test_a_store_is_not_dead_after_less_than_two_heartbeats(argv, env, capsys):
    # One late heartbeat must not make a live store look dead.
    with pytest.raises(SystemExit) as caught:
        load_config(argv, env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dead-after-seconds: must be at least twice --heartbeat-seconds" in err


def test_the_postgres_session_bounds_follow_dead_after_unless_set():
    defaults = load_config([], {})
    assert (
        defaults.idle_in_transaction_seconds,
        defaults.statement_timeout_seconds,
        defaults.keepalive_seconds,
    ) == (3.0, 30.0, 3.0)
    slow = load_config(["--dead-after-seconds=10"], {})
    assert (
        slow.idle_in_transaction_seconds,
        slow.statement_timeout_seconds,
        slow.keepalive_seconds,
    ) == (10.0, 100.0, 10.0)
    config = load_config(
        [
            "--db-idle-in-transaction-seconds=1.5",
            "--db-statement-timeout-seconds=60",
            "--db-keepalive-seconds=20",
        ],
        {},
    )
    assert (
        config.idle_in_transaction_seconds,
        config.statement_timeout_seconds,
        config.keepalive_seconds,
    ) == (1.5, 60.0, 20.0)


@pytest.mark.parametrize(
    "flag",
    [
        "--db-idle-in-transaction-seconds",
        "--db-statement-timeout-seconds",
        "--db-keepalive-seconds",
    ],
)
def test_a_session_bound_of_zero_exits_2_naming_the_flag(flag, capsys):
    # Zero means "no bound" to PostgreSQL: the very hang these settings exist to prevent.
    with pytest.raises(SystemExit) as caught:
        load_config([f"{flag}=0"], {})
    assert caught.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
