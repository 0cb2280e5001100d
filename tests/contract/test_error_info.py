"""Errors a caller must tell apart carry a google.rpc.ErrorInfo (reason, domain "ackbot.dev",
the message id in its metadata), decoded from real RPCs of a real store with grpc_status. The
reasons a single request shows (MESSAGE_NOT_FOUND, ID_TAKEN, NOT_DEAD, LEASE_NOT_CURRENT) are
rows of test_rejections.py; here are those that need a scene: a lapsed lease, a locked or full
database, a shutdown."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest
from google.rpc import error_details_pb2

from ackbot.store.errors import ERROR_DOMAIN, StorageFull
from ackbot.store.grpc_errors import status_for
from ackbot.testing import RPC_TIMEOUT, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.contract import error_info
from tests.support.harness import StreamReader, create, seconds

LEASE_SECONDS = 1.0


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def assert_reason(error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str, **metadata):
    assert error.code() == code, error
    info = error_info(error)
    assert info is not None, error
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    assert dict(info.metadata) == metadata


async def test_a_lapsed_lease_is_told_apart_from_a_wrong_one(stub, settler):
    # A wrong token is LEASE_NOT_CURRENT (test_bad_input.py); the current token of a lease that
    # lapsed is LEASE_EXPIRED, so that a bot knows its reply came too late.
    await create(stub, "to lease", id="leased")
    reader = StreamReader(stub, consumer="info", max_in_flight=1, lease_seconds=LEASE_SECONDS)
    try:
        delivery = await reader.next()
        assert delivery.message.id == "leased"

        # The current lease, once it has lapsed (a lapsed lease is shown as PENDING; the stream
        # does not deliver it again while its one slot waits for this client's answer).
        async def lapsed() -> bool:
            got = await stub.GetMessage(pb.GetMessageRequest(id="leased"), timeout=RPC_TIMEOUT)
            return got.message.state == pb.MESSAGE_STATE_PENDING

        await wait_until(lapsed, within=10, what="the lease to lapse")
        error = await refused(
            settler.ExtendLease(
                pb.ExtendLeaseRequest(
                    id="leased", lease_token=delivery.lease_token, lease_duration=seconds(30)
                ),
                timeout=RPC_TIMEOUT,
            )
        )
        assert_reason(
            error, grpc.StatusCode.FAILED_PRECONDITION, "LEASE_EXPIRED", message_id="leased"
        )
    finally:
        await reader.close()


async def test_a_locked_database_is_storage_unavailable(start_store, tmp_path):
    db_path = tmp_path / "locked.db"
    store = await start_store.started(db_path=db_path, args=["--lock-timeout-seconds", "0.5"])
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        intruder = sqlite3.connect(db_path, isolation_level=None)
        try:
            intruder.execute("BEGIN IMMEDIATE")
            error = await refused(
                stub.CreateMessage(
                    pb.CreateMessageRequest(message=pb.Message(author="a", text="t")),
                    timeout=RPC_TIMEOUT,
                )
            )
        finally:
            intruder.close()
    assert_reason(error, grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")


async def test_a_stream_ended_by_shutdown_says_shutting_down(store, stub):
    reader = StreamReader(stub, consumer="until-shutdown")
    try:
        await reader.wait_open()
        assert await store.aterminate() == 0, store.describe()
        await asyncio.wait_for(reader._task, RPC_TIMEOUT)
    finally:
        await reader.close()
    assert isinstance(reader.error, grpc.aio.AioRpcError), reader.error
    assert_reason(reader.error, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")


def test_a_full_database_is_storage_full():
    # Filling a disk is out of reach of a test; the mapping is what a full database meets.
    status = status_for(StorageFull())
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == ("STORAGE_FULL", ERROR_DOMAIN)


async def test_deleted_and_held_messages_are_told_apart(stub, settler):
    # Issue 19: a deleted message is NOT_FOUND [MESSAGE_DELETED] to every call about it (the
    # bot's settles included: they settle the delivery), and its id is ALREADY_EXISTS
    # [MESSAGE_DELETED] to a create; HELD is FAILED_PRECONDITION to MarkProcessed, approving
    # anything else too.
    await create(stub, "to delete", id="deleted")
    reader = StreamReader(stub, consumer="info", max_in_flight=1, lease_seconds=30)
    try:
        delivery = await reader.next()
        assert delivery.message.id == "deleted"
        await stub.DeleteMessage(pb.DeleteMessageRequest(id="deleted"), timeout=RPC_TIMEOUT)
        token = delivery.lease_token
        for call in (
            settler.MarkProcessed(
                pb.MarkProcessedRequest(
                    id="deleted", lease_token=token, reply=pb.Message(author="bot", text="late")
                ),
                timeout=RPC_TIMEOUT,
            ),
            settler.ReleaseMessage(
                pb.ReleaseMessageRequest(id="deleted", lease_token=token, reason="failed"),
                timeout=RPC_TIMEOUT,
            ),
            settler.ExtendLease(
                pb.ExtendLeaseRequest(id="deleted", lease_token=token, lease_duration=seconds(30)),
                timeout=RPC_TIMEOUT,
            ),
            stub.GetMessage(pb.GetMessageRequest(id="deleted"), timeout=RPC_TIMEOUT),
            stub.ApproveMessage(pb.ApproveMessageRequest(id="deleted"), timeout=RPC_TIMEOUT),
        ):
            error = await refused(call)
            assert_reason(error, grpc.StatusCode.NOT_FOUND, "MESSAGE_DELETED", message_id="deleted")
    finally:
        await reader.close()
    error = await refused(
        stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(id="deleted", author="b", text="again")),
            timeout=RPC_TIMEOUT,
        )
    )
    assert_reason(error, grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_DELETED", message_id="deleted")

    await stub.CreateMessage(
        pb.CreateMessageRequest(message=pb.Message(id="held", author="a", text="t"), hold=True),
        timeout=RPC_TIMEOUT,
    )
    error = await refused(
        settler.MarkProcessed(pb.MarkProcessedRequest(id="held"), timeout=RPC_TIMEOUT)
    )
    assert_reason(error, grpc.StatusCode.FAILED_PRECONDITION, "MESSAGE_HELD", message_id="held")
    await create(stub, "pending", id="pending")
    error = await refused(
        stub.ApproveMessage(pb.ApproveMessageRequest(id="pending"), timeout=RPC_TIMEOUT)
    )
    assert_reason(error, grpc.StatusCode.FAILED_PRECONDITION, "NOT_HELD", message_id="pending")
