"""The store client as the bot's error boundary: against a real store, each status code a settling
call can end with comes back as the outcome the worker acts on, and the stream ends with a reason
instead of an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from ackbot.client.outcomes import CallResult, Outcome, outcome_of
from ackbot.client.router import StoreClient
from ackbot.client.streams import ConsumeSession, DeliveryStream
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .helpers import closed_port, create, get

# Settling calls in these tests fail or succeed at once; a budget this size only bounds a hang.
BUDGET = 10.0


@pytest.fixture(params=["unary", "consume"])
async def client(request, store, channels) -> AsyncIterator[StoreClient]:
    """A client whose settling calls are unary RPCs, or go on a Consume session (drained, so
    the test's own streams get the deliveries): the outcomes are the same."""
    client = StoreClient(channels(store.address))
    if request.param == "unary":
        yield client
        return
    session = client.session(consumer="settler", max_in_flight=1, lease_seconds=30.0)
    session.drain()
    assert await session.wait_open(), session.end_reason
    try:
        yield client
    finally:
        await session.finish(BUDGET)
        session.cancel()
        assert session.end_code is grpc.StatusCode.OK, session.end_reason


def reply(text: str = "a reply", author: str = "bot") -> pb.Message:
    return pb.Message(author=author, text=text)


async def take_delivery(client: StoreClient, *, lease_seconds: float = 30.0):
    """Opens a stream and returns it with its first delivery (the caller cancels the stream)."""
    stream = client.stream(consumer="test", max_in_flight=1, lease_seconds=lease_seconds)
    assert await stream.wait_open(), stream.end_reason
    deliveries = await asyncio.wait_for(anext(stream), BUDGET)
    assert len(deliveries) == 1
    return stream, deliveries[0]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, Outcome.LEASE_GONE),
        (grpc.StatusCode.NOT_FOUND, Outcome.NOT_FOUND),
        (grpc.StatusCode.INVALID_ARGUMENT, Outcome.REJECTED),
        (grpc.StatusCode.UNAVAILABLE, Outcome.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Outcome.UNAVAILABLE),
        (grpc.StatusCode.INTERNAL, Outcome.FAILED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Outcome.FAILED),
        (grpc.StatusCode.UNKNOWN, Outcome.FAILED),
        (grpc.StatusCode.ALREADY_EXISTS, Outcome.FAILED),
        (grpc.StatusCode.PERMISSION_DENIED, Outcome.FAILED),
    ],
)
def test_each_status_code_maps_to_one_outcome(code, outcome):
    assert outcome_of(code) is outcome


def test_a_failed_calls_problem_is_one_line_naming_the_code():
    result = CallResult[object](Outcome.REJECTED, status="INVALID_ARGUMENT", details="id: bad")
    assert result.problem == "INVALID_ARGUMENT: id: bad"


# -- MarkProcessed ------------------------------------------------------------------------------


async def test_mark_processed_settles_then_says_already_processed_with_the_first_reply(
    stub, client
):
    await create(stub, "m-1", "hello")
    first = await client.mark_processed("m-1", "", reply("first"), budget_seconds=BUDGET)
    assert first.outcome is Outcome.SETTLED
    assert first.response is not None
    assert first.response.reply.text == "first"

    again = await client.mark_processed("m-1", "", reply("second"), budget_seconds=BUDGET)
    assert again.outcome is Outcome.ALREADY_PROCESSED
    assert again.response is not None
    assert again.response.reply.id == first.response.reply.id
    assert again.response.reply.text == "first"


async def test_mark_processed_of_an_unknown_id_is_not_found(client):
    result = await client.mark_processed("no-such-id", "", reply(), budget_seconds=BUDGET)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.status == "NOT_FOUND"
    assert "no-such-id" in result.details
    assert result.response is None


async def test_a_reply_over_the_stores_limit_is_rejected_with_the_stores_reason(
    start_store, channels
):
    store = await start_store(max_text_bytes=10)
    client = StoreClient(channels(store.address))
    await create(pb_grpc.MessageStoreStub(channels(store.address)), "m-1", "hello")
    result = await client.mark_processed("m-1", "", reply("x" * 11), budget_seconds=BUDGET)
    assert result.outcome is Outcome.REJECTED
    assert result.status == "INVALID_ARGUMENT"
    assert result.details == "reply.text: must be at most 10 bytes of UTF-8 (got 11)"
    assert "\n" not in result.problem


async def test_a_request_over_the_stores_size_limit_fails_without_being_a_rejection(
    start_store, channels
):
    # gRPC itself refuses the request before the store reads it: RESOURCE_EXHAUSTED, which is
    # not about a field of the reply, so it is not REJECTED.
    store = await start_store(max_request_bytes=1024)
    client = StoreClient(channels(store.address))
    await create(pb_grpc.MessageStoreStub(channels(store.address)), "m-1", "hello")
    result = await client.mark_processed("m-1", "", reply("x" * 2000), budget_seconds=BUDGET)
    assert result.outcome is Outcome.FAILED
    assert result.status == "RESOURCE_EXHAUSTED"


# -- ReleaseMessage and ExtendLease -------------------------------------------------------------


async def test_release_settles_and_a_second_release_with_the_stale_token_finds_the_lease_gone(
    stub, client
):
    await create(stub, "m-1", "hello")
    stream, delivery = await take_delivery(client)
    try:
        token = delivery.lease_token
        released = await client.release(
            "m-1", token, reason="it failed", retry_after_seconds=0.0, budget_seconds=BUDGET
        )
        assert released.outcome is Outcome.SETTLED
        assert released.response is not None
        assert released.response.message.last_error == "it failed"

        stale = await client.release(
            "m-1", token, reason="again", retry_after_seconds=0.0, budget_seconds=BUDGET
        )
        assert stale.outcome is Outcome.LEASE_GONE
        assert stale.status == "FAILED_PRECONDITION"
        extended = await client.extend("m-1", token, lease_seconds=5.0, budget_seconds=BUDGET)
        assert extended.outcome is Outcome.LEASE_GONE
    finally:
        stream.cancel()


async def test_extend_settles_with_the_new_expiry(stub, client):
    await create(stub, "m-1", "hello")
    stream, delivery = await take_delivery(client, lease_seconds=5.0)
    try:
        result = await client.extend(
            "m-1", delivery.lease_token, lease_seconds=600.0, budget_seconds=BUDGET
        )
        assert result.outcome is Outcome.SETTLED
        assert result.response is not None
        new_expiry = result.response.message.lease_expire_time.ToNanoseconds()
        assert new_expiry > delivery.lease_expire_time.ToNanoseconds()
        assert (await get(stub, "m-1")).lease_expire_time.ToNanoseconds() == new_expiry
    finally:
        stream.cancel()


async def test_release_and_extend_of_an_unknown_id_are_not_found(client):
    released = await client.release(
        "no-such-id", "token", reason="", retry_after_seconds=0.0, budget_seconds=BUDGET
    )
    assert released.outcome is Outcome.NOT_FOUND
    extended = await client.extend("no-such-id", "token", lease_seconds=5.0, budget_seconds=BUDGET)
    assert extended.outcome is Outcome.NOT_FOUND


async def test_a_release_reason_the_store_refuses_is_rejected(stub, client):
    await create(stub, "m-1", "hello")
    stream, delivery = await take_delivery(client)
    try:
        result = await client.release(
            "m-1",
            delivery.lease_token,
            reason="a NUL \x00 in it",
            retry_after_seconds=0.0,
            budget_seconds=BUDGET,
        )
        assert result.outcome is Outcome.REJECTED
        assert result.details == "reason: must not contain NUL (U+0000)"
    finally:
        stream.cancel()


async def test_every_call_to_a_store_that_is_not_there_ends_unavailable(channels):
    client = StoreClient(channels(f"127.0.0.1:{closed_port()}"))
    # A budget too small for more than a retry or two: the outcome comes back soon.
    budget = 0.3
    results = [
        await client.mark_processed("m-1", "", reply(), budget_seconds=budget),
        await client.release(
            "m-1", "token", reason="", retry_after_seconds=0.0, budget_seconds=budget
        ),
        await client.extend("m-1", "token", lease_seconds=5.0, budget_seconds=budget),
    ]
    for result in results:
        assert result.outcome is Outcome.UNAVAILABLE, result
        assert result.status == "UNAVAILABLE"
        assert result.response is None


# -- the stream ---------------------------------------------------------------------------------


async def test_the_stream_opens_with_the_stores_reply_limit_and_ends_with_a_reason(
    start_store, channels
):
    store = await start_store(max_text_bytes=500)
    client = StoreClient(channels(store.address))
    await create(pb_grpc.MessageStoreStub(channels(store.address)), "m-1", "hello")
    stream = client.stream(consumer="test", max_in_flight=4, lease_seconds=30.0)
    try:
        assert await stream.wait_open()
        assert stream.max_reply_bytes == 500
        assert stream.end_reason == ""
        deliveries = await asyncio.wait_for(anext(stream), BUDGET)
        assert [d.message.id for d in deliveries] == ["m-1"]
        assert deliveries[0].attempt == 1

        await store.server.stop()
        rest = [batch async for batch in stream]
        assert rest == []
        assert stream.end_reason == "UNAVAILABLE: the store is shutting down; reconnect"
    finally:
        stream.cancel()


async def test_a_stream_to_a_store_that_is_not_there_never_opens_and_says_why(channels):
    stream: DeliveryStream = StoreClient(channels(f"127.0.0.1:{closed_port()}")).stream(
        consumer="test", max_in_flight=1, lease_seconds=30.0
    )
    try:
        assert not await stream.wait_open()
        assert stream.max_reply_bytes == DEFAULT_MAX_TEXT_BYTES
        assert [batch async for batch in stream] == []
        assert stream.end_reason.startswith("UNAVAILABLE: ")
        assert "\n" not in stream.end_reason
    finally:
        stream.cancel()


async def test_cancelling_the_stream_ends_a_pending_read_with_cancelled_error(client):
    stream = client.stream(consumer="test", max_in_flight=1, lease_seconds=30.0)
    assert await stream.wait_open()
    reading = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.05)  # pacing: let the read start waiting (no messages exist)
    assert not reading.done()
    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(reading, BUDGET)


# -- Consume ------------------------------------------------------------------------------------


async def test_a_session_delivers_and_settles_on_the_same_stream(stub, store, channels):
    client = StoreClient(channels(store.address))
    await create(stub, "m-1", "hello")
    await create(stub, "m-2", "hello again")
    session = client.session(consumer="test", max_in_flight=1, lease_seconds=30.0)
    try:
        assert await session.wait_open(), session.end_reason
        assert session.max_reply_bytes == DEFAULT_MAX_TEXT_BYTES
        (first,) = await asyncio.wait_for(anext(session), BUDGET)
        result = await client.mark_processed(
            first.message.id, first.lease_token, reply(), budget_seconds=BUDGET
        )
        assert result.outcome is Outcome.SETTLED
        # The settlement freed the session's one slot.
        (second,) = await asyncio.wait_for(anext(session), BUDGET)
        assert second.message.id == "m-2"
        # Drained first: the release frees the slot, and the store must not fill it.
        session.drain()
        released = await client.release(
            "m-2", second.lease_token, reason="", retry_after_seconds=0.0, budget_seconds=BUDGET
        )
        assert released.outcome is Outcome.SETTLED
        await session.finish(BUDGET)
        assert session.end_code is grpc.StatusCode.OK
        assert [batch async for batch in session] == [], "nothing after the drain"
    finally:
        session.cancel()


async def test_a_settlement_after_its_session_ended_is_made_by_the_unary_call(
    stub, store, channels, caplog
):
    client = StoreClient(channels(store.address))
    await create(stub, "m-1", "hello")
    session = client.session(consumer="test", max_in_flight=1, lease_seconds=30.0)
    assert await session.wait_open(), session.end_reason
    (delivery,) = await asyncio.wait_for(anext(session), BUDGET)
    session.cancel()
    result = await client.mark_processed(
        "m-1", delivery.lease_token, reply(), budget_seconds=BUDGET
    )
    assert result.outcome is Outcome.SETTLED
    assert (await get(stub, "m-1")).state == pb.MESSAGE_STATE_PROCESSED


async def test_a_store_without_consume_says_unimplemented(old_store, channels):
    session: ConsumeSession = StoreClient(channels(old_store.address)).session(
        consumer="test", max_in_flight=1, lease_seconds=30.0
    )
    try:
        assert not await session.wait_open()
        assert session.end_code is grpc.StatusCode.UNIMPLEMENTED
        assert [batch async for batch in session] == []
    finally:
        session.cancel()
