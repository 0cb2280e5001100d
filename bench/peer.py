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
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ackbot.bot.responder import PersonaResponder
from bench import consumer
from bench.consumer import reply_text
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


async def persistence(client: Redis) -> dict[str, str]:
    """Redis's persistence settings, for the note beside its figures: what an acknowledged
    write survives (appendfsync always: a power cut; everysec: a crash of Redis, not of the
    machine; appendonly no: only the snapshots that `save` schedules)."""
    settings: dict[str, str] = {}
    for name in ("appendonly", "appendfsync", "save"):
        try:
            value = (await client.config_get(name)).get(name)
        except RedisError:  # CONFIG renamed or disabled on a managed Redis
            value = None
        settings[name] = "unknown" if value is None else str(value)
    return settings


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
    Entry = tuple[bytes, dict[bytes, bytes]]

    async def claim(room: int) -> list[Entry]:
        batch: Any = await client.xreadgroup(
            GROUP, "consumer-1", {spec.stream: ">"}, count=room, block=BLOCK_MS
        )
        return [entry for _stream, entries in batch or [] for entry in entries]

    async def settle(entry: Entry) -> None:
        entry_id, fields = entry
        original_id = fields[b"id"].decode()
        text = await reply_text(
            responder, original_id, fields[b"author"].decode(), fields[b"text"].decode()
        )
        reply = {"reply_to": original_id, "author": PERSONA, "text": text}
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(spec.reply_stream, reply)  # type: ignore[arg-type]
            pipe.xack(spec.stream, GROUP, entry_id)
            await pipe.execute()

    try:
        return await consumer.consume(spec.count, spec.max_in_flight, claim, settle)
    finally:
        await client.aclose()


def main() -> None:
    spec = ConsumerSpec(**json.loads(sys.argv[1]))
    announce({"event": "done", **asyncio.run(consume(spec))})


if __name__ == "__main__":
    main()
