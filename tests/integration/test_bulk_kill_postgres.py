"""A store on PostgreSQL killed (kill -9) mid-sweep and mid-erasure: every batch is one
transaction, so the database keeps whole batches done and the rest as it was, never an answered
message without its reply (or a reply without its message, which the foreign key forbids
anyway), never a message deleted while its reply is not; a store started again finishes."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from ackbot.testing import wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.heavy import heavy
from tests.support.postgres import asyncpg_dsn, fresh_database

pytestmark = [
    heavy,
    pytest.mark.postgres,
]

PAIRS = 40_000
# Answered pairs straight into the schema the store made: an original of "filler", its reply.
_FILL = """
INSERT INTO messages (sequence, id, author, text, receive_time_ns, state, reply_to,
                      delivery_attempts, visible_at_ns, process_time_ns)
SELECT nextval('messages_sequence_seq'), m.id, m.author, 'filled', 1, 'PROCESSED', m.reply_to,
       0, 0, 1
FROM generate_series(0, $1 - 1) AS n,
     LATERAL (VALUES ('f-' || n, 'filler', NULL), ('f-' || n || '-r', 'bot', 'f-' || n))
         AS m(id, author, reply_to)
"""
_LONELY = """
SELECT count(*) FROM messages o
WHERE o.reply_to IS NULL AND o.state = 'PROCESSED'
  AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.reply_to = o.id)
"""
_SPLIT = """
SELECT count(*) FROM messages o JOIN messages r ON r.reply_to = o.id
WHERE (o.state = 'DELETED') != (r.state = 'DELETED')
"""


async def _filled(start_store, url: str) -> None:
    schema = await start_store.started(name="schema", args=["--db", url])
    await schema.aterminate()
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(_FILL, PAIRS)
    finally:
        await connection.close()


async def _count(url: str, query: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await connection.fetchval(query))
    finally:
        await connection.close()


async def test_a_postgres_store_killed_mid_sweep_leaves_nothing_half_removed(start_store):
    async with fresh_database("ackbot_kill_sweep") as url:
        await _filled(start_store, url)
        retain = ["--db", url, "--retain-processed", "0s", "--sweep-seconds", "0.2"]
        store = await start_store.started(name="sweeper", args=retain)
        await wait_until(
            lambda: "(retention)" in store.log_text(), within=30, what="the first batch removed"
        )
        await store.akill()

        assert await _count(url, _LONELY) == 0
        rows = await _count(url, "SELECT count(*) FROM messages")
        assert 0 < rows < 2 * PAIRS, "the kill came after the sweep ended"
        again = await start_store.started(name="again", args=retain)

        async def all_removed() -> bool:
            return await _count(url, "SELECT count(*) FROM messages") == 0

        await wait_until(all_removed, within=120, what="the rest removed")
        again.cleanup()


async def test_a_postgres_store_killed_mid_erasure_leaves_nothing_half_deleted(start_store):
    async with fresh_database("ackbot_kill_erase") as url:
        await _filled(start_store, url)
        store = await start_store.started(name="eraser", args=["--db", url])
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            call = stub.EraseAuthor(pb.EraseAuthorRequest(author="filler"))
            first = await anext(aiter(call))
            assert not first.done
            await store.akill()
            call.cancel()

        assert await _count(url, _SPLIT) == 0
        left = await _count(url, "SELECT count(*) FROM messages WHERE author = 'filler'")
        assert 0 < left < PAIRS, "the kill came after the erasure ended"
        again = await start_store.started(name="again", args=["--db", url])
        async with grpc.aio.insecure_channel(again.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            rest = [r async for r in stub.EraseAuthor(pb.EraseAuthorRequest(author="filler"))]
        assert rest[-1].deleted_count == 2 * left
        assert await _count(url, _SPLIT) == 0
        again.cleanup()
