"""The store killed with SIGKILL and restarted on the same SQLite file: every acknowledged
create and reply is still there, and the leases the dead store had handed out are given back
at start instead of waiting for their expiry."""

from __future__ import annotations

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import StreamReader, create, create_many, get, list_all

pytestmark = pytest.mark.slow


async def test_acknowledged_writes_and_leases_survive_a_store_kill(start_store, tmp_path):
    db_path = tmp_path / "kept.db"
    first = await start_store.started(name="first", db_path=db_path)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        ids = await create_many(stub, 60, clients=6, prefix="durable")
        reader = StreamReader(stub, consumer="held", max_in_flight=3, lease_seconds=3600)
        held = [delivery.message.id for delivery in await reader.take(3)]
        answered = await stub.MarkProcessed(
            pb.MarkProcessedRequest(id=held[0], reply=pb.Message(author="bot", text="done")),
            timeout=RPC_TIMEOUT,
        )
        # The kill lands right after the last OK: nothing in between may get it to disk.
        assert await first.akill() == -9
        await reader.close()

    second = await start_store.started(name="second", db_path=db_path)
    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        messages = {m.id: m for m in await list_all(stub)}
        assert set(ids) <= set(messages), "an acknowledged create was lost"

        original = await get(stub, held[0])
        assert original.state == pb.MESSAGE_STATE_PROCESSED
        assert original.reply_id == answered.reply.id
        assert messages[answered.reply.id].reply_to == held[0]

        # Leased for an hour by a stream of the dead store, yet deliverable again at once.
        for message_id in held[1:]:
            message = await get(stub, message_id)
            assert message.state == pb.MESSAGE_STATE_PENDING, message
            assert message.delivery_attempts == 1
        reader = StreamReader(stub, consumer="after-restart", max_in_flight=2, lease_seconds=60)
        try:
            redelivered = {delivery.message.id for delivery in await reader.take(2)}
        finally:
            await reader.close()
        assert redelivered == set(held[1:])

        # Life goes on after the restart: sequences keep increasing.
        fresh = await create(stub, "after the crash", id="fresh-1")
        assert fresh.sequence > max(m.sequence for m in messages.values())
