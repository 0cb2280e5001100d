"""A client-only install: `ackbot` (the CLI) needs none of the store's dependencies, and
`ackbot-store` without them says in one line to install ackbot[store].

"Not installed" is made real with a meta-path finder, installed by `-c` before anything is
imported, that refuses those modules and records every attempt."""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys

from ackbot.testing import child_env

from .harness import get

CLI_TIMEOUT = 30
STORE_ONLY = ("sqlalchemy", "aiosqlite", "asyncpg", "alembic", "uvloop")

BLOCKER = f"""
import atexit, sys

BLOCKED = {STORE_ONLY!r}
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


def run_without_store_extra(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_without(STORE_ONLY, f"from {entry} import main\nsys.exit(main(sys.argv[1:]))", *args)


def run_without(
    blocked: tuple[str, ...], script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a Python where the modules `blocked` are not installed."""
    code = f"{BLOCKER.replace(repr(STORE_ONLY), repr(blocked))}\n{script}\n"
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


def test_the_store_dependencies_are_behind_the_store_extra():
    requirements = importlib.metadata.requires("ackbot") or []
    for name in STORE_ONLY:
        [requirement] = [r for r in requirements if r.lower().startswith(name)]
        assert 'extra == "store"' in requirement, requirement


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
NOT_FOR_THE_CLIENT = (*STORE_ONLY, "openai", "httpx", "httpx2", "prometheus_client")


async def test_the_client_library_runs_without_the_store_or_bot_dependencies(store, stub):
    result = await asyncio.to_thread(run_without, NOT_FOR_THE_CLIENT, CLIENT_SCRIPT, store.address)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing tried to import a blocked module
    assert result.stdout.strip() == "client-lib"
    assert (await get(stub, "client-lib")).text == "from the client library"
