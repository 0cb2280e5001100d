"""Fixtures for the bot's tests: a real store, in-process in the test's own event loop, on port 0
and a fresh SQLite file (or a PostgreSQL database several stores share), and the channels that
talk to it."""

from __future__ import annotations

import contextlib
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

from ackbot.client.channels import open_channel
from ackbot.client.router import StoreClient
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


class _OldStoreMethods(grpc.GenericRpcHandler):
    """Every MessageStore method but Consume, each forwarded as bytes to a real store."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        service, _, name = method.rpartition("/")
        if service != f"/{SERVICE}" or name not in OLD_METHODS:
            return None  # grpc answers UNIMPLEMENTED, as a store older than the method does
        if name == "StreamUnprocessed":
            return grpc.unary_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _unary(self, method: str) -> Callable[..., Awaitable[bytes]]:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                response: bytes = await self._channel.unary_unary(method)(
                    request, timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "", exc.trailing_metadata())
            return response

        return forward

    def _stream(self, method: str) -> Callable[..., AsyncIterator[bytes]]:
        async def forward(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            call = self._channel.unary_stream(method)(request)
            try:
                await context.send_initial_metadata(await call.initial_metadata())
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "", exc.trailing_metadata())
            finally:
                call.cancel()

        return forward


SERVICE = "ackbot.v1.MessageStore"
# The methods of a store older than Consume.
OLD_METHODS = frozenset(
    {
        "CreateMessage",
        "GetMessage",
        "ListMessages",
        "MarkProcessed",
        "StreamUnprocessed",
        "ReleaseMessage",
        "ExtendLease",
        "RequeueMessage",
    }
)


@dataclass(frozen=True)
class OldStore:
    address: str


@contextlib.asynccontextmanager
async def old_store_before(store: RunningStore) -> AsyncIterator[OldStore]:
    """A real gRPC server in front of `store` that serves only the RPCs stores had before
    Consume, and answers Consume with UNIMPLEMENTED, as such a store does."""
    async with grpc.aio.insecure_channel(store.address) as channel:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((_OldStoreMethods(channel),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield OldStore(f"127.0.0.1:{port}")
        finally:
            await server.stop(0)


@pytest.fixture
async def old_store(store: RunningStore) -> AsyncIterator[OldStore]:
    async with old_store_before(store) as old:
        yield old


@pytest.fixture(params=["consume", "old store"])
async def any_store(request, store: RunningStore) -> AsyncIterator[RunningStore | OldStore]:
    """`store` itself (the bot uses Consume), or an old store in front of it (the bot falls
    back to StreamUnprocessed and the unary calls)."""
    if request.param == "consume":
        yield store
        return
    async with old_store_before(store) as old:
        yield old
