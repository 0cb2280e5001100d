"""A TCP proxy that the chaos run places between clients and the store, to break the network.

`cut()` resets every open connection at once (a dropped link: both ends see a reset, not a
polite close). `stall(seconds)` stops forwarding in both directions, for open and new
connections alike, then resumes with nothing lost: what was read before the stall is delivered
after it, and meanwhile the kernel buffers fill so the peers feel back-pressure, as on a link
that hangs. Connections made while the upstream is down are reset at once, as the store itself
would refuse them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# SO_LINGER on with a zero timeout: close() sends RST instead of FIN, which is what a peer sees
# when a middlebox drops the connection.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    # Cleared while this link alone is stalled (see TcpProxy.stall_one).
    flowing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.flowing.set()

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            writer.transport.abort()


class TcpProxy:
    """Forwards connections from `address` to `upstream_host:upstream_port`.

    Use `await start()` and `await close()`, or `async with`.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1"
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen_host = listen_host
        self._server: asyncio.Server | None = None
        # A dict for its order: stall_one picks by accept order, so a seed picks the same link.
        self._links: dict[_Link, None] = {}
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self._listen_host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self._listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Before waiting: from Python 3.12 wait_closed() also waits for open connections.
        self.cut()
        self._flowing.set()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def cut(self) -> int:
        """Resets every open connection; returns how many there were."""
        links, self._links = list(self._links), {}
        for link in links:
            link.reset()
            for pump in link.pumps:
                pump.cancel()
        return len(links)

    async def stall(self, seconds: float) -> None:
        """Forwards nothing for `seconds`, then resumes (returns once it has resumed). One stall
        at a time: the first to end resumes forwarding."""
        self._flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._flowing.set()

    async def stall_one(self, seconds: float, rng: random.Random) -> bool:
        """Like `stall`, but for one open connection picked by `rng` (in the order they were
        accepted), while the others flow: one client alone partitioned. False when none is open.
        """
        links = list(self._links)
        if not links:
            return False
        link = rng.choice(links)
        link.flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            link.flowing.set()
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A stalled link does not even complete the upstream handshake.
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links[link] = None
        link.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        try:
            # Either side closing ends the link: gRPC never half-closes a connection it still
            # uses, and the other pump must not outlive a dead peer.
            await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.pop(link, None)
            for pump in link.pumps:
                pump.cancel()
            await asyncio.gather(*link.pumps, return_exceptions=True)
            for side in (writer, up_writer):
                side.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(CHUNK_BYTES):
                await self._flowing.wait()
                await link.flowing.wait()
                if sink.is_closing():
                    return
                sink.write(data)
                await sink.drain()
