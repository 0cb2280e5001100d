"""Fixtures for the bot's tests: a real store, in-process in the test's own event loop, on port 0
and a fresh SQLite file (or a PostgreSQL database several stores share), and the channels that
talk to it."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from ackbot.bot.store_client import StoreClient, open_channel
from ackbot.store.config import StoreConfig
from ackbot.store.server import StoreServer
from ackbot.testing.fake_llm import FakeLLM
from ackbot.v1 import message_store_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class RunningStore:
    server: StoreServer
    port: int
    config: StoreConfig

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


StartStore = Callable[..., Awaitable[RunningStore]]

POSTGRES_URL_ENV = "ACKBOT_TEST_POSTGRES_URL"
# With pytest.mark.postgres, on tests whose stores share one database: a SQLite file has one
# owner.
skip_without_postgres = pytest.mark.skipif(
    not os.environ.get(POSTGRES_URL_ENV), reason=f"{POSTGRES_URL_ENV} is not set"
)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A database of its own on the server named by ACKBOT_TEST_POSTGRES_URL, dropped after.
    Ask for it before `start_store`, so that the stores stop before it is dropped."""
    base = make_url(os.environ[POSTGRES_URL_ENV])
    name = f"ackbot_bot_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(
        base.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def start_store(tmp_path) -> AsyncIterator[StartStore]:
    """start_store(**StoreConfig fields) -> a serving store; every one is stopped at teardown."""
    servers: list[StoreServer] = []
    numbers = itertools.count(1)

    async def start(**options: Any) -> RunningStore:
        settings: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "db_url": f"sqlite+aiosqlite:///{tmp_path}/store-{next(numbers)}.db",
            # Stops fast; a bot test has no slow unary calls to wait for.
            "grace_seconds": 1.0,
            # The tests never cut the power: NORMAL spares an fsync per commit on a busy machine.
            "sqlite_synchronous": "NORMAL",
            **options,
        }
        config = StoreConfig(**settings)
        server = StoreServer(config)
        servers.append(server)
        port = await server.start()
        return RunningStore(server, port, config)

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def store(start_store: StartStore) -> RunningStore:
    return await start_store()


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """channels(address) -> a channel, closed at teardown (before the stores stop)."""
    opened: list[grpc.aio.Channel] = []

    def open_to(address: str) -> grpc.aio.Channel:
        channel = open_channel(address)
        opened.append(channel)
        return channel

    yield open_to
    for channel in opened:
        await channel.close()


@pytest.fixture
def stub(store: RunningStore, channels) -> pb_grpc.MessageStoreStub:
    return pb_grpc.MessageStoreStub(channels(store.address))


@pytest.fixture
def client(store: RunningStore, channels) -> StoreClient:
    return StoreClient(channels(store.address))


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A scripted chat-model server on a loopback port (ackbot.testing.fake_llm)."""
    with FakeLLM() as server:
        yield server
