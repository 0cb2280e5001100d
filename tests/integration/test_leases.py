"""Leases through the real RPCs: ExtendLease keeps a message, ReleaseMessage's retry_after and
reason, the attempt given back by a reason-less release, and a bot that keeps its lease alive
while a reply takes longer than the lease itself."""

from __future__ import annotations

import time

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, responders
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import StreamReader, create, get, seconds, wait_state


async def test_extend_lease_moves_the_expiry_and_keeps_the_message(stub, settler):
    await create(stub, "take your time", id="extend-1")
    reader = StreamReader(stub, consumer="extender", max_in_flight=1, lease_seconds=2)
    try:
        delivery = await reader.next()
        first_expiry = delivery.lease_expire_time.ToNanoseconds()
        response = await settler.ExtendLease(
            pb.ExtendLeaseRequest(
                id="extend-1", lease_token=delivery.lease_token, lease_duration=seconds(30)
            ),
            timeout=RPC_TIMEOUT,
        )
        assert response.message.state == pb.MESSAGE_STATE_LEASED
        assert response.message.lease_expire_time.ToNanoseconds() > first_expiry + 20 * 10**9
        # Past the original 2 s lease the message must not come back on any stream.
        await reader.expect_nothing(window=3.0)
        assert (await get(stub, "extend-1")).state == pb.MESSAGE_STATE_LEASED
    finally:
        await reader.close()


async def test_release_with_reason_keeps_the_error_and_waits_retry_after(stub, settler):
    await create(stub, "fails once", id="release-1")
    reader = StreamReader(stub, consumer="releaser", max_in_flight=1, lease_seconds=60)
    try:
        first = await reader.next()
        released_at = time.monotonic()
        response = await settler.ReleaseMessage(
            pb.ReleaseMessageRequest(
                id="release-1",
                lease_token=first.lease_token,
                reason="model timed out",
                retry_after=seconds(1.5),
            ),
            timeout=RPC_TIMEOUT,
        )
        assert response.message.state == pb.MESSAGE_STATE_PENDING
        assert response.message.last_error == "model timed out"
        assert response.message.delivery_attempts == 1

        again = await reader.next(within=10)
        waited = time.monotonic() - released_at
        assert again.message.id == "release-1"
        assert again.attempt == 2
        assert again.message.last_error == "model timed out"
        assert waited >= 1.4, f"redelivered after {waited:.2f} s, before retry_after"

        # The old token is dead: settling with it is refused, and changes nothing.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await settler.ReleaseMessage(
                pb.ReleaseMessageRequest(id="release-1", lease_token=first.lease_token),
                timeout=RPC_TIMEOUT,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await get(stub, "release-1")).state == pb.MESSAGE_STATE_LEASED
    finally:
        await reader.close()


async def test_release_without_reason_gives_the_attempt_back(stub, settler):
    await create(stub, "not started", id="handback-1")
    reader = StreamReader(stub, consumer="hander", max_in_flight=1, lease_seconds=60)
    try:
        delivery = await reader.next()
        assert delivery.attempt == 1
        response = await settler.ReleaseMessage(
            pb.ReleaseMessageRequest(id="handback-1", lease_token=delivery.lease_token),
            timeout=RPC_TIMEOUT,
        )
        assert response.message.delivery_attempts == 0
        assert response.message.last_error == ""
        again = await reader.next()
        assert again.message.id == "handback-1"
        assert again.attempt == 1
    finally:
        await reader.close()


@pytest.mark.slow
async def test_a_bot_keeps_its_lease_while_a_reply_outlasts_it(stub, start_bot):
    # A 4.5 s reply under a 2 s lease: only ExtendLease, every half lease, keeps the message
    # from going to another stream. Answered once, on the first and only delivery. (Each
    # extension has a second of slack, enough for a loaded CI machine.)
    await start_bot(
        persona="patient",
        max_in_flight=2,
        lease_seconds=2,
        responder=responders.spec("slow"),
        env={"ACKBOT_TEST_RESPONDER_DELAY": "4.5"},
    )
    await create(stub, "a long question", id="long-1")
    message = await wait_state(stub, "long-1", pb.MESSAGE_STATE_PROCESSED, within=20)
    assert message.delivery_attempts == 1, message
    replies = await stub.ListMessages(
        pb.ListMessagesRequest(reply_to="long-1"), timeout=RPC_TIMEOUT
    )
    assert [reply.author for reply in replies.messages] == ["patient"]
