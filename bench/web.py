"""The web front door, measured (issue 20): PostComment over HTTP/1.1 beside CreateMessage over
gRPC against the same store in one run, and one thread watched by many viewers.

    python -m bench.web [--seconds 5] [--concurrency 16] [--viewers 500]

1. Creates: `--concurrency` clients in a closed loop for `--seconds` each way: JSON
   PostComment calls on keep-alive HTTP/1.1 connections to ackbot-web (which makes one
   CreateMessage per call), then CreateMessage on one gRPC channel to the store directly.
   Calls/s and latency percentiles of both.
2. Viewers: `--viewers` WatchThread streams on one thread, each its own HTTP/1.1 connection.
   The web process's memory (RSS) before and after they open gives the memory per viewer; then
   a comment is posted, the bot answers it, and the time from the reply being stored (its
   receive_time, the store's clock on this machine) to each viewer reading it is measured: the
   last viewer's is the figure.

Store, bot and web are real processes (ackbot.testing), logging at INFO as deployed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from ackbot.testing import bot_service, store_service
from ackbot.testing.web import web_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from bench.settings import log_as_deployed

API = "/ackbot.web.v1.CommentService/"


class Http:
    """One keep-alive HTTP/1.1 connection: just enough of the protocol for the bench."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Http:
        return cls(*await asyncio.open_connection(host, port))

    def send(self, path: str, body: bytes, content_type: str) -> None:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def head(self) -> dict[str, str]:
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"HTTP {status!r}")
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    async def unary(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.send(path, json.dumps(body).encode(), "application/json")
        headers = await self.head()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        else:
            data = b"".join([chunk async for chunk in self.chunks()])
        return json.loads(data)

    async def chunks(self) -> Any:
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            if size == 0:
                await self.reader.readline()
                return
            yield await self.reader.readexactly(size)
            await self.reader.readline()

    def close(self) -> None:
        self.writer.close()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


async def closed_loop(concurrency: int, seconds: float, one: Any) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(number: int) -> None:
        state = await one.open(number)
        n = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await one.call(state, number, n)
            latencies.append(time.perf_counter() - began)
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {"calls_per_second": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


class PostComments:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def open(self, number: int) -> Http:
        return await Http.open(self.host, self.port)

    async def call(self, http: Http, number: int, n: int) -> None:
        body = {"thread": f"bench-{number}", "author": "bench", "text": f"comment {n}"}
        await http.unary(API + "PostComment", body)


class CreateMessages:
    def __init__(self, stub: pb_grpc.MessageStoreStub) -> None:
        self.stub = stub

    async def open(self, number: int) -> None:
        return None

    async def call(self, state: None, number: int, n: int) -> None:
        message = pb.Message(author="bench", text=f"comment {n}", conversation_id=f"g-{number}")
        await self.stub.CreateMessage(pb.CreateMessageRequest(message=message), timeout=10)


async def watch(
    host: str,
    port: int,
    thread: str,
    opened: asyncio.Event,
    seen: dict[int, float],
    index: int,
    reply_text: str,
) -> None:
    http = await Http.open(host, port)
    payload = json.dumps({"thread": thread}).encode()
    http.send(
        API + "WatchThread",
        b"\0" + struct.pack(">I", len(payload)) + payload,
        "application/connect+json",
    )
    await http.head()
    buffer = b""
    async for chunk in http.chunks():
        buffer += chunk
        while len(buffer) >= 5:
            size = struct.unpack(">I", buffer[1:5])[0]
            if len(buffer) < 5 + size:
                break
            frame, buffer = json.loads(buffer[5 : 5 + size]), buffer[5 + size :]
            if "comment" not in frame:
                opened.set()
                continue
            reply = frame["comment"].get("reply")
            if reply and index not in seen:
                seen[index] = time.time()
                http.close()
                return


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def viewers(host: str, port: int, web_pid: int, count: int) -> dict[str, Any]:
    process = psutil.Process(web_pid)
    rss_before = process.memory_info().rss
    seen: dict[int, float] = {}
    events = [asyncio.Event() for _ in range(count)]
    tasks = []
    for index in range(count):
        tasks.append(
            asyncio.create_task(watch(host, port, "crowd", events[index], seen, index, ""))
        )
        if index % 50 == 49:
            await asyncio.sleep(0)  # let the connections open in batches
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    await asyncio.sleep(1.0)
    rss_open = process.memory_info().rss
    poster = await Http.open(host, port)
    await poster.unary(API + "PostComment", {"thread": "crowd", "author": "ana", "text": "Hello"})
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    listed = await poster.unary(API + "ListThread", {"thread": "crowd"})
    poster.close()
    stored = stamp(listed["comments"][0]["reply"]["createTime"])
    delays = sorted(t - stored for t in seen.values())
    return {
        "viewers": count,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_with_viewers_mb": round(rss_open / 2**20, 1),
        "kb_per_viewer": round((rss_open - rss_before) / count / 1024, 1),
        "reply_to_first_viewer_ms": round(delays[0] * 1000, 1),
        "reply_to_median_viewer_ms": round(statistics.median(delays) * 1000, 1),
        "reply_to_last_viewer_ms": round(delays[-1] * 1000, 1),
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    store = store_service(workdir)
    await store.astart()
    services = [store]
    try:
        bot = bot_service(workdir, store.address)
        await bot.astart()
        services.append(bot)
        web = web_service(
            workdir,
            store.address,
            "--posts-per-minute",
            "0",
            "--watches-per-address",
            str(args.viewers + 10),
            log_level="INFO",
        )
        await web.astart()
        services.append(web)
        host, port = "127.0.0.1", web.port
        results: dict[str, Any] = {}
        results["PostComment (HTTP/1.1 JSON, via ackbot-web)"] = await closed_loop(
            args.concurrency, args.seconds, PostComments(host, port)
        )
        async with grpc.aio.insecure_channel(store.address) as channel:
            results["CreateMessage (gRPC, to the store)"] = await closed_loop(
                args.concurrency, args.seconds, CreateMessages(pb_grpc.MessageStoreStub(channel))
            )
        assert web.proc is not None
        results["one thread, many viewers"] = await viewers(host, port, web.proc.pid, args.viewers)
        return results
    finally:
        for service in reversed(services):
            service.cleanup()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--viewers", type=int, default=500)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_as_deployed()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as workdir:
        results = asyncio.run(run(args, Path(workdir)))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
