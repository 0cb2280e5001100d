"""`make run`'s children never outlive it (tools/run_local.py): whether its terminal closes
(SIGHUP), its output pipe breaks before a Ctrl-C (`make run | tee log`), or it is killed outright,
the store and the bot are gone soon after."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ackbot.testing import child_env, sync_wait_until
from tests.support.harness import REPO_ROOT

pytestmark = pytest.mark.slow

READY_BANNER = "ackbot is ready"
START_TIMEOUT = 40.0
# The children's own graceful stop (bot, then store) fits well inside this.
GONE_TIMEOUT = 30.0
_STARTED = re.compile(r"started (store|bot|web) \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Runner:
    """run_local.py with its output in a pipe we read (and may close)."""

    def __init__(self, tmp_path: Path) -> None:
        self.output: list[str] = []
        self.children: list[int] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "tools" / "run_local.py"),
                "--store-listen",
                f"127.0.0.1:{free_port()}",
                "--bot-listen",
                f"127.0.0.1:{free_port()}",
                "--web-listen",
                f"127.0.0.1:{free_port()}",
                "--db",
                f"sqlite+aiosqlite:///{tmp_path}/data/ackbot.db",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env(),
            text=True,
            # A session of its own, as under a terminal: the signals we send reach it alone.
            start_new_session=True,
        )

    def wait_ready(self) -> list[int]:
        """Reads the output up to the ready banner; returns the store's and the bot's pids.
        The runner gives up on its own within its --ready-timeout, which ends the output."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if READY_BANNER in line:
                break
        text = "".join(self.output)
        assert READY_BANNER in text, text
        children = dict(_STARTED.findall(text))
        assert set(children) == {"store", "bot", "web"}, text
        self.children = [int(pid) for pid in children.values()]
        assert all(alive(pid) for pid in self.children)
        return self.children

    def close_pipe(self) -> None:
        assert self.process.stdout is not None
        self.process.stdout.close()

    def assert_children_gone(self, after: str) -> None:
        sync_wait_until(
            lambda: not any(alive(pid) for pid in self.children),
            GONE_TIMEOUT,
            what=f"the store, the bot and the web front door to exit after {after}",
        )

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def runner(tmp_path) -> Iterator[Runner]:
    started = Runner(tmp_path)
    yield started
    started.cleanup()


def test_a_closed_terminal_stops_both_services(runner):
    runner.wait_ready()
    runner.process.send_signal(signal.SIGHUP)
    assert runner.process.wait(GONE_TIMEOUT) == 0
    runner.assert_children_gone("SIGHUP")


def test_a_broken_output_pipe_does_not_keep_ctrl_c_from_stopping_both(runner):
    runner.wait_ready()
    runner.close_pipe()  # `tee` ended first
    runner.process.send_signal(signal.SIGINT)
    runner.process.wait(GONE_TIMEOUT)
    runner.assert_children_gone("Ctrl-C with a broken pipe")


def test_the_services_exit_when_the_runner_is_killed(runner):
    runner.wait_ready()
    runner.process.kill()
    runner.process.wait(GONE_TIMEOUT)
    runner.assert_children_gone("the runner's SIGKILL")
