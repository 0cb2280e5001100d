"""What `make run` runs (tools/run_local.py), end to end as a newcomer uses it: start, post a
first message, get the bot's reply, Ctrl-C, and both services are gone."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request

from ackbot.testing import child_env, sync_wait_until
from tests.support.harness import REPO_ROOT

READY_BANNER = "ackbot is ready"
START_TIMEOUT = 40.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    # run_local needs fixed ports (it prints them for copy-paste); the kernel picks free ones.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_make_run_answers_the_first_message_and_stops_on_ctrl_c(tmp_path):
    store_address = f"127.0.0.1:{free_port()}"
    bot_address = f"127.0.0.1:{free_port()}"
    web_address = f"127.0.0.1:{free_port()}"
    output = tmp_path / "run_local.log"
    with output.open("wb") as sink:
        launcher = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "tools" / "run_local.py"),
                "--store-listen",
                store_address,
                "--bot-listen",
                bot_address,
                "--web-listen",
                web_address,
                "--db",
                f"sqlite+aiosqlite:///{tmp_path}/data/ackbot.db",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env(),
        )
    try:
        sync_wait_until(
            lambda: READY_BANNER in output.read_text() or launcher.poll() is not None,
            START_TIMEOUT,
            what="run_local's ready banner",
        )
        assert READY_BANNER in output.read_text(), output.read_text()
        # The banner names the comment widget's page, and it serves it.
        assert f"Open http://{web_address}/" in output.read_text()
        with urllib.request.urlopen(f"http://{web_address}/", timeout=10) as page:
            assert b'src="/embed.js"' in page.read()

        cli = [sys.executable, "-m", "ackbot.cli", "--store", store_address, "--json"]
        posted = subprocess.run(
            [*cli, "post", "Hello", "--author", "newcomer", "--wait", "5"],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
            check=False,
        )
        assert posted.returncode == 0, posted.stdout + posted.stderr
        original, reply = (json.loads(line) for line in posted.stdout.splitlines())
        assert original["text"] == "Hello"
        assert reply["reply_to"] == original["id"]
        assert reply["author"] == "ackbot"

        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(STOP_TIMEOUT)
        assert code == 0, output.read_text()
        log = output.read_text()
        assert "store exited with code 0" in log, log
        assert "bot exited with code 0" in log, log
        assert "web exited with code 0" in log, log
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_the_banner_names_the_database_chosen_by_the_environment(tmp_path):
    db_url = f"sqlite+aiosqlite:///{tmp_path}/chosen.db"
    output = tmp_path / "run_local.log"
    with output.open("wb") as sink:
        launcher = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "tools" / "run_local.py"),
                "--store-listen",
                f"127.0.0.1:{free_port()}",
                "--bot-listen",
                f"127.0.0.1:{free_port()}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env({"ACKBOT_STORE_DB": db_url}),
        )
    try:
        sync_wait_until(
            lambda: READY_BANNER in output.read_text() or launcher.poll() is not None,
            START_TIMEOUT,
            what="run_local's ready banner",
        )
        banner = output.read_text()
        assert f"({db_url})" in banner, banner
        assert "default SQLite database" not in banner
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(STOP_TIMEOUT) == 0, output.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
