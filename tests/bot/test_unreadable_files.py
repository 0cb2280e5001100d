"""Issue 21 item 5: `ackbot-bot` given a key, token or certificate file it cannot read says so in
one line naming the flag, the path and the reason (not an exception's class name), and exits 2
before it starts anything (the real program, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ackbot.testing.process import READY_TIMEOUT


@pytest.mark.parametrize(
    ("flag", "args"),
    [
        ("--token-file", ["--token-file", "{missing}"]),
        ("--store-ca", ["--store-ca", "{missing}"]),
        ("--tls-cert", ["--tls-cert", "{missing}", "--tls-key", "{missing}"]),
        (
            "--llm-api-key-file",
            [
                "--backend",
                "openai",
                "--llm-model",
                "m",
                "--llm-url",
                "http://127.0.0.1:9/v1",
                "--llm-api-key-file",
                "{missing}",
            ],
        ),
    ],
)
def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path: Path, flag: str, args: list[str]):
    missing = str(tmp_path / "no-such-file")
    argv = [sys.executable, "-m", "ackbot.bot", "--store", "127.0.0.1:9"]
    argv += [arg.format(missing=missing) for arg in args]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=READY_TIMEOUT, cwd=tmp_path, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    [line] = lines
    assert line.startswith("ackbot-bot: error: "), line
    assert flag in line, line
    assert missing in line, line
    assert "No such file or directory" in line, line
    assert "Error" not in line.removeprefix("ackbot-bot: error: "), line
    assert "listening on" not in done.stdout + done.stderr
