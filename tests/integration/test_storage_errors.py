"""The database locked by someone else past the deadline: calls fail with UNAVAILABLE (which
clients retry), nothing is half-written, and the store recovers by itself once the lock goes."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import create, get, list_all

LOCK_TIMEOUT_SECONDS = 0.5


async def test_a_locked_database_gives_unavailable_then_recovers(start_store, tmp_path):
    db_path = tmp_path / "locked.db"
    store = await start_store.started(
        db_path=db_path, args=["--lock-timeout-seconds", str(LOCK_TIMEOUT_SECONDS)]
    )
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        await create(stub, "before the lock", id="before")

        # Another process of the machine takes SQLite's write lock and sits on it.
        intruder = sqlite3.connect(db_path, isolation_level=None)
        try:
            intruder.execute("BEGIN IMMEDIATE")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await create(stub, "during the lock", id="during")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "locked" in caught.value.details()
            assert "Traceback" not in caught.value.details()
            # Reads go on: WAL readers do not wait for the writer.
            assert (await get(stub, "before")).text == "before the lock"
        finally:
            intruder.execute("ROLLBACK")
            intruder.close()

        assert [m.id for m in await list_all(stub)] == ["before"], "a failed create left a row"
        # The client's retry, as UNAVAILABLE asks, goes through once the lock is gone.
        message = pb.Message(id="during", author="tester", text="during the lock")
        retried = await stub.CreateMessage(
            pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT
        )
        assert not retried.already_existed
        assert await store.aserving()
