"""The proxy really cuts and stalls: checked between two real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from chaos.proxy import TcpProxy

WITHIN = 5.0


class EchoServer:
    """Echoes what it reads; `ended` is set when a connection of it ends, however it ends."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> EchoServer:
        self.server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.ended.set()


@pytest.fixture
async def echo():
    server = await EchoServer().start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo):
    async with TcpProxy("127.0.0.1", echo.port) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def connected(proxy: TcpProxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def round_trip(reader, writer, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), WITHIN)


async def test_forwards_both_ways(proxy):
    async with connected(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"hello") == b"hello"
        assert proxy.open_connections == 1


async def test_stall_holds_bytes_until_it_ends_and_loses_none(proxy):
    async with connected(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"before") == b"before"
        stall = asyncio.create_task(proxy.stall(0.5))
        await asyncio.sleep(0)  # let the stall begin before the bytes are sent
        writer.write(b"during the stall")
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(16), WITHIN)
        # The echo could only come back once forwarding resumed.
        assert stall.done()
        assert echoed == b"during the stall"
        assert await round_trip(reader, writer, b"after") == b"after"


async def test_stall_one_holds_one_connection_while_the_other_flows(proxy):
    async with connected(proxy) as first, connected(proxy) as second:
        for reader, writer in (first, second):
            assert await round_trip(reader, writer, b"up") == b"up"
        stall = asyncio.create_task(proxy.stall_one(0.5, random.Random(0)))
        await asyncio.sleep(0)  # let the stall begin before the bytes are sent
        echoes = {}
        for name, (reader, writer) in (("first", first), ("second", second)):
            writer.write(b"ping")
            echoes[asyncio.create_task(reader.readexactly(4))] = name
        done, held = await asyncio.wait(echoes, timeout=WITHIN, return_when=asyncio.FIRST_COMPLETED)
        # One connection flowed while the stall lasted; the other got its bytes after it.
        assert len(done) == 1
        assert not stall.done()
        await asyncio.wait_for(asyncio.gather(*held), WITHIN)
        assert stall.done()
        assert stall.result() is True


async def test_a_connection_opened_during_a_stall_waits_for_its_end(proxy):
    stall = asyncio.create_task(proxy.stall(0.5))
    await asyncio.sleep(0)
    async with connected(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"late") == b"late"
        assert stall.done()


async def test_cut_resets_both_ends_and_new_connections_still_work(proxy, echo):
    async with connected(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"hello") == b"hello"
        assert proxy.cut() == 1
        # A reset, not a polite end of stream: what a dropped link looks like to gRPC.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), WITHIN)
        await asyncio.wait_for(echo.ended.wait(), WITHIN)
        assert proxy.open_connections == 0
    async with connected(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"again") == b"again"


async def test_a_connection_to_a_dead_upstream_is_reset(echo):
    await echo.close()
    async with TcpProxy("127.0.0.1", echo.port) as proxy, connected(proxy) as (reader, _):
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), WITHIN) == b""
