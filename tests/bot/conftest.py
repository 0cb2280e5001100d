"""Fixtures for the bot's tests: a real store, in-process in the test's own event loop, on port 0
and a fresh SQLite file, and the channels that talk to it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

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
