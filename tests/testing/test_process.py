"""ackbot.testing's own rules, without a store: the environment a child gets, the argv a
launcher makes, the waits, and how a service that dies early is reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ackbot.testing import (
    Service,
    ServiceError,
    bot_service,
    child_env,
    store_service,
    sync_wait_until,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_child_env_drops_ackbot_settings_and_adds_extra(monkeypatch):
    monkeypatch.setenv("ACKBOT_STORE_DB", "sqlite+aiosqlite:///elsewhere.db")
    monkeypatch.setenv("KEEP_ME", "1")
    env = child_env({"ACKBOT_TEST_RESPONDER_DELAY": "0.5"})
    assert "ACKBOT_STORE_DB" not in env
    assert env["KEEP_ME"] == "1"
    assert env["ACKBOT_TEST_RESPONDER_DELAY"] == "0.5"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_child_env_hands_down_the_source_root_but_not_the_virtualenv():
    # pytest put the repository root on sys.path: a child must import tests.* and bench.* too.
    path = child_env()["PYTHONPATH"].split(os.pathsep)
    assert str(REPO_ROOT) in path
    assert not any(Path(folder).is_relative_to(Path(sys.prefix).resolve()) for folder in path)


def test_a_launcher_replaces_python_m_ackbot_store_and_keeps_the_flags(tmp_path):
    launcher = [sys.executable, "-m", "some.wrapped_store", "extra-arg"]
    service = store_service(tmp_path, launcher=launcher, env={"WRAPPER_SETTING": "7"})
    assert service.argv[: len(launcher)] == launcher
    assert service.argv[len(launcher) :][:2] == ["--listen", "127.0.0.1:0"]
    assert service.env["WRAPPER_SETTING"] == "7"
    assert store_service(tmp_path).argv[:3] == [sys.executable, "-m", "ackbot.store"]


def test_bot_args_come_last_so_they_override(tmp_path):
    service = bot_service(tmp_path, "127.0.0.1:1", args=["--listen", "127.0.0.1:7777"])
    assert service.argv[-2:] == ["--listen", "127.0.0.1:7777"]
    assert service.name == "bot-bot"


def test_sync_wait_until_returns_the_truthy_value_or_names_what_it_waited_for():
    values = iter([None, 0, "ready"])
    assert sync_wait_until(lambda: next(values), timeout=5, interval=0) == "ready"
    with pytest.raises(TimeoutError, match=r"not true within 0\.01 s: the moon"):
        sync_wait_until(lambda: False, timeout=0.01, interval=0, what="the moon")


async def test_wait_until_awaits_a_coroutine_predicate():
    calls = []

    async def third_time_lucky() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert await wait_until(third_time_lucky, within=5, interval=0) == 3
    with pytest.raises(TimeoutError, match=r"not true within 0\.01 s: never"):
        await wait_until(lambda: None, within=0.01, interval=0, what="never")


def test_a_service_that_exits_before_listening_fails_with_its_log_tail(tmp_path):
    argv = [sys.executable, "-c", "print('cannot open the database'); raise SystemExit(3)"]
    service = Service("doomed", argv, tmp_path / "doomed.log", child_env())
    try:
        with pytest.raises(ServiceError) as failure:
            service.start().wait_ready(timeout=10)
    finally:
        service.cleanup()
    assert "doomed exited before it was listening" in str(failure.value)
    assert "exit code 3" in str(failure.value)
    assert "cannot open the database" in str(failure.value)
    assert service in Service.registry
