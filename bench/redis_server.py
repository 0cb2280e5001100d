"""A private `redis-server` for the Redis Streams peer, durable like ackbot's store: every write
is in the append-only file and fsynced before Redis answers it (`appendonly yes`, `appendfsync
always`), so an acknowledged XADD or EXEC survives a power cut as an acknowledged CreateMessage
or MarkProcessed does. Redis fsyncs once per event-loop turn for all the writes of that turn:
group commit, like the store's.

It runs on a free loopback port with its files in a folder of the caller's, and is shut down
(and its files left for the caller to delete) on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from redis.exceptions import RedisError

from ackbot.testing import wait_until
from bench import peer

# Long enough for a cold start on a busy machine; a healthy one answers in milliseconds.
START_SECONDS = 20.0
STOP_SECONDS = 10.0
DURABLE_CONFIG = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


def binary() -> str | None:
    return shutil.which("redis-server")


def _free_port() -> int:
    # Redis has no "port 0": take a port the kernel says is free. Another process could take it
    # before Redis binds; the start then fails and says so.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def durable_redis(folder: Path) -> AsyncIterator[str]:
    """Runs a durable redis-server with its files in `folder`; yields its HOST:PORT."""
    executable = binary()
    if executable is None:
        raise FileNotFoundError("redis-server is not installed")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = folder / "redis.log"
    argv = [
        executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--logfile", str(log), "--daemonize", "no", *DURABLE_CONFIG,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
    )
    try:

        async def answering() -> bool:
            if process.returncode is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"redis-server exited {process.returncode}:\n{text[-2000:]}")
            if not peer.redis_reachable(address):
                return False
            client = peer.connect(address)
            try:
                return bool(await client.ping())
            except (OSError, RedisError):  # refused, or still loading its append-only file
                return False
            finally:
                await client.aclose()

        await wait_until(answering, START_SECONDS, interval=0.05, what=f"redis-server on {address}")
        yield address
    finally:
        if process.returncode is None:
            process.terminate()  # Redis exits cleanly on SIGTERM (with `save ""`, no snapshot)
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()
