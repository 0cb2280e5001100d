"""The peer: the same end-to-end job on Redis Streams consumer groups.

The producers are bench.loadgen's (XADD in place of CreateMessage). The consumer below is the
bot's counterpart, run as its own process like the bot: it reads with XREADGROUP (which blocks
on the server and wakes on XADD: push, like the store's stream), keeps at most `max_in_flight`
messages in work, answers each with the same built-in persona, and writes the reply and the ack
atomically: MULTI { XADD reply, XACK } EXEC.

    python -m bench.peer '{"address": "127.0.0.1:6379", "stream": ..., "count": ...}'
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ackbot.bot.responder import IncomingMessage, PersonaResponder
from bench.loadgen import announce

GROUP = "bots"
# XREADGROUP blocks on the server for up to this long; new entries wake it at once.
BLOCK_MS = 100
PERSONA = "redis-bot"


@dataclass
class ConsumerSpec:
    address: str
    stream: str
    reply_stream: str
    count: int
    max_in_flight: int


def redis_reachable(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def connect(address: str) -> Redis:
    host, _, port = address.rpartition(":")
    return Redis(host=host, port=int(port))


async def durability(client: Redis) -> str:
    """Redis's persistence settings, for the note beside its figures."""
    appendonly = (await client.config_get("appendonly")).get("appendonly", "?")
    fsync = (await client.config_get("appendfsync")).get("appendfsync", "?")
    return f"appendonly={appendonly} appendfsync={fsync}"


async def reply_commit_times(client: Redis, reply_stream: str) -> dict[str, int]:
    """Original id -> the reply's commit time (ns): the entry id's milliseconds, which Redis
    stamps with its own clock inside the MULTI, so it never includes the consumer's wait."""
    committed: dict[str, int] = {}
    start = "-"
    while True:
        entries: Any = await client.xrange(reply_stream, min=start, count=1000)
        for entry_id, fields in entries:
            millis = int(entry_id.split(b"-")[0])
            committed[fields[b"reply_to"].decode()] = millis * 1_000_000
        if len(entries) < 1000:
            return committed
        start = "(" + entries[-1][0].decode()


async def consume(spec: ConsumerSpec) -> dict[str, Any]:
    client = connect(spec.address)
    responder = PersonaResponder(PERSONA)
    changed = asyncio.Condition()
    in_flight = settled = 0
    failures: list[BaseException] = []

    async def settle(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        nonlocal in_flight, settled
        try:
            message = IncomingMessage(
                id=fields[b"id"].decode(),
                author=fields[b"author"].decode(),
                text=fields[b"text"].decode(),
                attempt=1,
            )
            text = await responder.reply(message) or ""
            reply = {"reply_to": message.id, "author": PERSONA, "text": text}
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(spec.reply_stream, reply)  # type: ignore[arg-type]
                pipe.xack(spec.stream, GROUP, entry_id)
                await pipe.execute()
            settled += 1
        except Exception as exc:  # reported at the end; the run cannot count this message
            failures.append(exc)
        async with changed:
            in_flight -= 1
            changed.notify_all()

    def has_room() -> bool:
        return in_flight < spec.max_in_flight

    tasks: set[asyncio.Task[None]] = set()
    announce({"event": "measuring"})
    start = time.monotonic()
    try:
        while settled < spec.count and not failures:
            async with changed:
                await changed.wait_for(has_room)
                free = spec.max_in_flight - in_flight
            batch: Any = await client.xreadgroup(
                GROUP, "consumer-1", {spec.stream: ">"}, count=free, block=BLOCK_MS
            )
            for _stream, entries in batch or []:
                for entry_id, fields in entries:
                    in_flight += 1
                    task = asyncio.create_task(settle(entry_id, fields))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    finally:
        await client.aclose()
    if failures:
        raise failures[0]
    return {"settled": settled, "seconds": time.monotonic() - start}


def main() -> None:
    spec = ConsumerSpec(**json.loads(sys.argv[1]))
    announce({"event": "done", **asyncio.run(consume(spec))})


if __name__ == "__main__":
    main()
