"""The PostgreSQL peer: the bot's job done by a plain asyncpg program on a SKIP LOCKED queue.

The producers are bench.loadgen's (an INSERT per message, in place of CreateMessage). The
consumer below is the bot's counterpart, run as its own process like the bot: it claims up to
its free room with one `UPDATE ... WHERE sequence IN (SELECT ... FOR UPDATE SKIP LOCKED)` (the
claim that procrastinate and the store use), answers each with the same built-in persona, and
settles each in one transaction of its own: UPDATE the original to PROCESSED and INSERT the
reply row, in one statement (a data-modifying WITH), so one round trip. Like the store's, the
table keeps replies as rows pointing at their original, and a partial index holds only the
unsettled rows. When the queue is empty the consumer polls (every POLL_SECONDS): a NOTIFY per
INSERT would serialise the producers' commits on PostgreSQL's notification queue lock, one WAL
flush each, and measure that lock instead of the queue.

Durability is the server's: every COMMIT waits for its WAL flush when synchronous_commit is on.

    python -m bench.pg_peer '{"dsn": "postgresql://...", "table": ..., "count": ...}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from ackbot.bot.responder import PersonaResponder
from bench import consumer
from bench.consumer import reply_text
from bench.loadgen import announce

PERSONA = "pg-bot"
# Connections per pool (the producers', the consumer's): enough for the in-flight work on two
# cores, and far below the server's max_connections, which other clients share.
MAX_CONNECTIONS = 16
# How long the consumer waits after an empty claim: the latency it adds to a message that
# arrives at an idle queue, and the rate of empty claims when idle.
POLL_SECONDS = 0.005


@dataclass
class ConsumerSpec:
    dsn: str
    table: str
    count: int
    max_in_flight: int


def schema(table: str) -> list[str]:
    return [
        f"""CREATE TABLE {table} (
            sequence bigserial PRIMARY KEY,
            id text NOT NULL UNIQUE,
            author text NOT NULL,
            text text NOT NULL,
            state text NOT NULL DEFAULT 'PENDING',
            reply_to text UNIQUE REFERENCES {table} (id),
            process_time_ns bigint
        )""",
        f"CREATE INDEX {table}_unsettled ON {table} (sequence) WHERE state = 'PENDING'",
    ]


async def create_queue(dsn: str, table: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            for statement in schema(table):
                await connection.execute(statement)
    finally:
        await connection.close()


async def pool(dsn: str, size: int) -> Any:
    size = min(size, MAX_CONNECTIONS)
    return await asyncpg.create_pool(dsn, min_size=size, max_size=size)


async def insert(connections: Any, table: str, fields: dict[str, str]) -> None:
    await connections.execute(
        f"INSERT INTO {table} (id, author, text) VALUES ($1, $2, $3)",
        fields["id"],
        fields["author"],
        fields["text"],
    )


async def durability(dsn: str) -> dict[str, str]:
    """The server's settings that decide what a COMMIT's return promises."""
    connection = await asyncpg.connect(dsn)
    try:
        return {
            name: await connection.fetchval(f"SHOW {name}")
            for name in ("synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
        }
    finally:
        await connection.close()


async def reply_commit_times(dsn: str, table: str) -> dict[str, int]:
    """Original id -> the database's clock (ns) when its settling UPDATE ran."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            f"SELECT id, process_time_ns FROM {table} WHERE process_time_ns IS NOT NULL"
        )
    finally:
        await connection.close()
    return {row["id"]: row["process_time_ns"] for row in rows}


async def consume(spec: ConsumerSpec) -> dict[str, Any]:
    table = spec.table
    claim_sql = f"""UPDATE {table} SET state = 'LEASED' WHERE sequence IN (
        SELECT sequence FROM {table} WHERE state = 'PENDING' ORDER BY sequence LIMIT $1
        FOR UPDATE SKIP LOCKED) RETURNING id, author, text"""
    # The reply and the mark in one statement, so one round trip and one transaction: the
    # reply is stored only if this consumer still held the original.
    settle_sql = f"""WITH marked AS (
            UPDATE {table} SET state = 'PROCESSED',
                process_time_ns = (extract(epoch FROM clock_timestamp()) * 1e9)::bigint
            WHERE id = $4 AND state = 'LEASED' RETURNING id)
        INSERT INTO {table} (id, author, text, state, reply_to)
        SELECT $1, $2, $3, 'PROCESSED', id FROM marked"""
    responder = PersonaResponder(PERSONA)
    connections = await pool(spec.dsn, spec.max_in_flight)

    async def claim(room: int) -> list[Any]:
        rows: list[Any] = await connections.fetch(claim_sql, room)
        if not rows:
            # Pacing of the poll (see the module docstring), not a wait for a condition.
            await asyncio.sleep(POLL_SECONDS)
        return rows

    async def settle(row: Any) -> None:
        text = await reply_text(responder, row["id"], row["author"], row["text"])
        await connections.execute(settle_sql, f"{row['id']}-reply", PERSONA, text, row["id"])

    try:
        return await consumer.consume(spec.count, spec.max_in_flight, claim, settle)
    finally:
        await connections.close()


def main() -> None:
    spec = ConsumerSpec(**json.loads(sys.argv[1]))
    announce({"event": "done", **asyncio.run(consume(spec))})


if __name__ == "__main__":
    main()
