"""The rejections that need a scene, and the limits from the inside: the largest accepted values
pass, a request over 64 KiB is RESOURCE_EXHAUSTED, and a wrong lease token on a leased message
is FAILED_PRECONDITION (LEASE_NOT_CURRENT) on both settling paths, leaving the lease untouched.
The one-row-per-rule table is test_rejections.py. One store serves the whole module: each case
checks for itself that the store's contents are unchanged and that it still answers."""

from __future__ import annotations

import grpc
import pytest

from ackbot.store.errors import ERROR_DOMAIN
from ackbot.testing import RPC_TIMEOUT, store_service
from ackbot.v1 import message_store_pb2 as pb
from tests.support.contract import error_info
from tests.support.harness import (
    StreamReader,
    create,
    get,
    list_all,
    seconds,
    wait_state,
)

VICTIM = "victim-1"
OK_REPLY = pb.Message(author="bot", text="fine")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # The victim is delivered by several tests in turn (once per settling path): room for all
    # of them before it would go DEAD.
    service = store_service(tmp_path_factory.mktemp("bad-input"), args=["--max-attempts", "20"])
    try:
        yield service.start().wait_ready()
    finally:
        service.cleanup()


async def call(stub, rpc: str, request):
    """Makes the call; a stream is read to its first response or its error."""
    if rpc == "StreamUnprocessed":
        stream = stub.StreamUnprocessed(request, timeout=RPC_TIMEOUT)
        try:
            return await stream.read()
        finally:
            stream.cancel()
    return await getattr(stub, rpc)(request, timeout=RPC_TIMEOUT)


async def snapshot(stub):
    return [m.SerializeToString(deterministic=True) for m in await list_all(stub)]


@pytest.fixture
async def victim(stub):
    """A PENDING message the bad requests point at; it must come out of each case untouched."""
    try:
        await get(stub, VICTIM)
    except grpc.aio.AioRpcError:
        await create(stub, "I must not change", id=VICTIM)
    return VICTIM


async def assert_still_serving(store, stub):
    assert await store.aserving("ackbot.v1.MessageStore")
    assert (await get(stub, VICTIM)).state == pb.MESSAGE_STATE_PENDING


async def test_limits_themselves_are_accepted(store, stub, victim):
    created = await create(stub, "t" * (16 * 1024), id="L" * 128, author="a" * 64)
    assert created.id == "L" * 128
    utf8 = await create(stub, "\u00e9" * 8192, id="utf8-16k", author="ana")
    assert len(utf8.text.encode()) == 16 * 1024
    page = await stub.ListMessages(pb.ListMessagesRequest(page_size=1000), timeout=RPC_TIMEOUT)
    assert page.messages
    for message_id in ("L" * 128, "utf8-16k"):
        await stub.MarkProcessed(pb.MarkProcessedRequest(id=message_id), timeout=RPC_TIMEOUT)
    # max_in_flight 0 means the default, and 1000 and a lease of 1 s and 1 h are in range.
    for request in (
        pb.StreamUnprocessedRequest(max_in_flight=0),
        pb.StreamUnprocessedRequest(max_in_flight=1000, lease_duration=seconds(1)),
        pb.StreamUnprocessedRequest(max_in_flight=1, lease_duration=seconds(3600)),
    ):
        reader = StreamReader(
            stub,
            consumer="limits",
            max_in_flight=request.max_in_flight,
            lease_seconds=request.lease_duration.seconds or None,
        )
        try:
            await reader.wait_open()
            delivery = await reader.next()
            assert delivery.message.id == VICTIM
        finally:
            await reader.close()
        await wait_pending(stub, VICTIM)


async def wait_pending(stub, message_id):
    await wait_state(stub, message_id, pb.MESSAGE_STATE_PENDING, within=5)


async def test_request_over_64_kib_is_resource_exhausted(store, stub, victim):
    before = await snapshot(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, "x" * (70 * 1024), id="too-big")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await snapshot(stub) == before
    await assert_still_serving(store, stub)


def assert_not_current(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    info = error_info(error)
    assert info is not None, error
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "LEASE_NOT_CURRENT",
        ERROR_DOMAIN,
        {"message_id": VICTIM},
    )


async def test_wrong_lease_token_is_failed_precondition(store, stub, settler, victim):
    reader = StreamReader(stub, consumer="wrong-token", max_in_flight=1, lease_seconds=300)
    try:
        delivery = await reader.next()
        assert delivery.message.id == VICTIM
        before = await snapshot(stub)
        wrong = [
            (
                "ReleaseMessage",
                pb.ReleaseMessageRequest(id=VICTIM, lease_token="wrong", reason="x"),
            ),
            ("ReleaseMessage", pb.ReleaseMessageRequest(id=VICTIM, lease_token="wrong")),
            (
                "ExtendLease",
                pb.ExtendLeaseRequest(id=VICTIM, lease_token="wrong", lease_duration=seconds(60)),
            ),
        ]
        for rpc, request in wrong:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(settler, rpc, request)
            assert_not_current(caught.value)
        assert await snapshot(stub) == before, "the lease and the message are untouched"
        leased = await get(stub, VICTIM)
        assert leased.state == pb.MESSAGE_STATE_LEASED
        assert leased.lease_expire_time == delivery.lease_expire_time

        # The right token works, and then the old token is stale.
        await settler.ReleaseMessage(
            pb.ReleaseMessageRequest(id=VICTIM, lease_token=delivery.lease_token),
            timeout=RPC_TIMEOUT,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await settler.ExtendLease(
                pb.ExtendLeaseRequest(
                    id=VICTIM, lease_token=delivery.lease_token, lease_duration=seconds(60)
                ),
                timeout=RPC_TIMEOUT,
            )
        assert_not_current(caught.value)
    finally:
        await reader.close()
    await wait_pending(stub, VICTIM)
    await assert_still_serving(store, stub)
