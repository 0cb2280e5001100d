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
    service = Service("doomed", argv, tmp_path / "doomed.log", child_env()).expect_exit(3)
    try:
        with pytest.raises(ServiceError) as failure:
            service.start().wait_ready(timeout=10)
    finally:
        service.cleanup()
    assert "doomed exited before it was listening" in str(failure.value)
    assert "exit code 3" in str(failure.value)
    assert "cannot open the database" in str(failure.value)
    assert service in Service.registry


def run_to_exit(tmp_path: Path, name: str, code: str) -> Service:
    service = Service(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", child_env())
    assert service.start().proc is not None
    service.proc.wait(10)
    return service


def test_teardown_holds_an_unexpected_exit_code_against_a_service(tmp_path):
    crashed = run_to_exit(tmp_path, "crashed", "raise SystemExit(2)")
    assert crashed.problems() == ["exited with code 2, which the test did not expect"]
    assert crashed.expect_exit(2).problems() == []
    assert run_to_exit(tmp_path, "clean", "pass").problems() == []


def test_teardown_holds_a_traceback_in_the_log_against_a_service(tmp_path):
    broken = run_to_exit(tmp_path, "broken", "1 / 0")
    broken.expect_exit(1)
    [problem] = broken.problems()
    assert problem.startswith("logged a traceback:")
    assert "ZeroDivisionError" in problem
    assert broken.expect_traceback().problems() == []


def test_a_traceback_a_library_logs_below_warning_is_not_a_failure(tmp_path):
    code = (
        "print('2026-01-01 00:00:00,000 DEBUG grpc.aio._call: Client request_iterator raised"
        " exception:'); print('Traceback (most recent call last):'); print('CancelledError')"
    )
    assert run_to_exit(tmp_path, "quiet", code).problems() == []
    loud = run_to_exit(tmp_path, "loud", code.replace(" DEBUG ", " ERROR "))
    assert loud.problems()[0].startswith("logged a traceback")
    loud.expect_traceback()  # for this test's own teardown


def test_a_service_the_test_killed_may_exit_by_the_signal(tmp_path):
    service = Service("victim", [sys.executable, "-c", "input()"], tmp_path / "v.log", child_env())
    service.start()
    assert service.kill() == -9
    assert service.problems() == []
