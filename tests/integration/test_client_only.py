"""A client-only install: `ackbot` (the CLI) needs none of the store's or the bot's extra
dependencies, `ackbot-store` without them says in one line to install ackbot[store], and
`ackbot-bot` answers with its persona without the LLM clients (ackbot[bot]), and says in one
line to install them when an LLM backend is asked for.

"Not installed" is made real with a meta-path finder, installed by `-c` before anything is
imported, that refuses those modules and records every attempt."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import subprocess
import sys

import pytest

from ackbot.testing import child_env, wait_until
from tests.support.harness import create, get

CLI_TIMEOUT = 30
STORE_ONLY = ("sqlalchemy", "aiosqlite", "asyncpg", "alembic", "uvloop")
BOT_ONLY = ("openai", "httpx2")

BLOCKER = f"""
import atexit, sys

BLOCKED = {STORE_ONLY + BOT_ONLY!r}
attempts = []


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
atexit.register(lambda: attempts and print("imported:", *attempts, file=sys.stderr))
"""


def without_extras(entry: str) -> str:
    """`python -c` code that runs `entry`'s main as if neither extra were installed."""
    return f"{BLOCKER}\nfrom {entry} import main\nsys.exit(main(sys.argv[1:]))\n"


def run_without_store_extra(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `entry`'s main as if neither extra were installed."""
    return run_without(
        STORE_ONLY + BOT_ONLY, f"from {entry} import main\nsys.exit(main(sys.argv[1:]))", *args
    )


def run_without(
    blocked: tuple[str, ...], script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a Python where the modules `blocked` are not installed."""
    code = f"{BLOCKER.replace(repr(STORE_ONLY + BOT_ONLY), repr(blocked))}\n{script}\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=child_env(),
        check=False,
        stdin=subprocess.DEVNULL,
    )


async def test_the_cli_runs_without_the_store_dependencies(store, stub):
    helped = await asyncio.to_thread(run_without_store_extra, "ackbot.cli", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "post" in helped.stdout
    assert helped.stderr == ""  # nothing tried to import a store module

    posted = await asyncio.to_thread(
        run_without_store_extra,
        "ackbot.cli",
        "post",
        "from a client-only install",
        "--id",
        "client-only",
        "--store",
        store.address,
    )
    assert posted.returncode == 0, posted.stderr
    assert posted.stderr == ""
    assert (await get(stub, "client-only")).text == "from a client-only install"


def test_the_store_without_its_dependencies_is_one_line(tmp_path):
    result = run_without_store_extra(
        "ackbot.store.__main__",
        "--listen",
        "127.0.0.1:0",
        "--db",
        f"sqlite+aiosqlite:///{tmp_path}/x.db",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("imported:")]
    # Which module is named depends on import order; it is the first one missing.
    assert len(lines) == 1, result.stderr
    prefix, _, missing = lines[0].partition(": error: ")
    assert prefix == "ackbot-store"
    assert missing.split()[0] in STORE_ONLY, lines
    assert missing.endswith(
        " is not installed: the store needs ackbot[store] (pip install 'ackbot[store]')"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_store_without_its_dependencies_still_answers_help_and_version():
    helped = run_without_store_extra("ackbot.store.__main__", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: ackbot-store")
    version = run_without_store_extra("ackbot.store.__main__", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"ackbot {importlib.metadata.version('ackbot')}"


def test_the_store_dependencies_are_behind_the_store_extra():
    requirements = importlib.metadata.requires("ackbot") or []
    for name in STORE_ONLY:
        [requirement] = [r for r in requirements if r.lower().startswith(name)]
        assert 'extra == "store"' in requirement, requirement


async def test_the_persona_bot_runs_without_the_llm_clients(store, stub):
    bot = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        without_extras("ackbot.bot.__main__"),
        "--store",
        store.address,
        "--listen",
        "127.0.0.1:0",
        "--persona",
        "Lean",
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await create(stub, "hello from a lean install", id="lean")
        await wait_until(
            lambda: _is_processed(stub, "lean"), within=CLI_TIMEOUT, what="the persona reply"
        )
    finally:
        bot.terminate()
        _, stderr = await asyncio.wait_for(bot.communicate(), CLI_TIMEOUT)
    # uvloop is the one optional module (ackbot.common.eventloop falls back without it).
    reached = [line.split()[1:] for line in stderr.decode().splitlines() if "imported:" in line]
    assert reached in ([], [["uvloop"]]), stderr.decode()


async def _is_processed(stub, message_id: str) -> bool:
    return (await get(stub, message_id)).reply_id != ""


@pytest.mark.parametrize("backend", ["openai", "ollama"])
def test_an_llm_backend_without_the_bot_extra_is_one_line(backend):
    result = run_without_store_extra(
        "ackbot.bot.__main__", "--backend", backend, "--llm-model", "m", "--listen", "127.0.0.1:0"
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("imported:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ackbot-bot: error: argument --backend: ")
    assert lines[0].endswith(
        f"is not installed: the {backend} backend needs ackbot[bot] (pip install 'ackbot[bot]')"
    )


def test_the_llm_clients_are_behind_the_bot_extra():
    requirements = importlib.metadata.requires("ackbot") or []
    for name in BOT_ONLY:
        [requirement] = [r for r in requirements if re.match(rf"{name}\b", r.lower())]
        assert 'extra == "bot"' in requirement, requirement


CLIENT_SCRIPT = """
import asyncio, sys
from ackbot.client import Client, Publisher

async def main():
    async with Client.connect(sys.argv[1]) as client:
        async with Publisher(client) as publisher:
            future = publisher.publish("from the client library", author="lib", id="client-lib")
        print(future.result().message.id)

asyncio.run(main())
"""
# Beyond the store's extra, the client library needs none of the bot's dependencies either.
NOT_FOR_THE_CLIENT = (*STORE_ONLY, *BOT_ONLY, "httpx", "prometheus_client")


async def test_the_client_library_runs_without_the_store_or_bot_dependencies(store, stub):
    result = await asyncio.to_thread(run_without, NOT_FOR_THE_CLIENT, CLIENT_SCRIPT, store.address)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing tried to import a blocked module
    assert result.stdout.strip() == "client-lib"
    assert (await get(stub, "client-lib")).text == "from the client library"
