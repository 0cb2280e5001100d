"""Bad input on every RPC gets the documented status code, names the field in a
google.rpc.BadRequest, and changes nothing. One store serves the whole module: each case checks
for itself that the store's contents are unchanged and that it still answers."""

from __future__ import annotations

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, store_service
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    StreamReader,
    bad_request_fields,
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
    service = store_service(tmp_path_factory.mktemp("bad-input"))
    try:
        yield service.start().wait_ready()
    finally:
        service.cleanup()


def msg(**fields) -> pb.Message:
    return pb.Message(**{"author": "ana", "text": "hello", **fields})


def create_req(**fields):
    return "CreateMessage", pb.CreateMessageRequest(message=msg(**fields))


def list_req(**fields):
    return "ListMessages", pb.ListMessagesRequest(**fields)


def stream_req(**fields):
    return "StreamUnprocessed", pb.StreamUnprocessedRequest(**fields)


def release_req(**fields):
    return "ReleaseMessage", pb.ReleaseMessageRequest(
        **{"id": VICTIM, "lease_token": "token", **fields}
    )


def extend_req(**fields):
    return "ExtendLease", pb.ExtendLeaseRequest(
        **{"id": VICTIM, "lease_token": "token", "lease_duration": seconds(30), **fields}
    )


def mark_req(**fields):
    return "MarkProcessed", pb.MarkProcessedRequest(**{"id": VICTIM, "reply": OK_REPLY, **fields})


BAD_ID_CHARS = ("has space", "slash/no", "caf\u00e9", "tab\there", "semi;colon", "a" * 129)

# (case name, (rpc, request), the field the BadRequest must name)
CASES = [
    ("create: id 129 chars", create_req(id="x" * 129), "message.id"),
    *[(f"create: id {bad!r}", create_req(id=bad), "message.id") for bad in BAD_ID_CHARS[:-1]],
    ("create: empty author", create_req(author=""), "message.author"),
    ("create: author 65 chars", create_req(author="a" * 65), "message.author"),
    ("create: author with newline", create_req(author="a\nb"), "message.author"),
    ("create: empty text", create_req(text=""), "message.text"),
    ("create: text 16 KiB + 1", create_req(text="x" * (16 * 1024 + 1)), "message.text"),
    ("create: text 16 KiB + 2 of UTF-8", create_req(text="\u00e9" * 8193), "message.text"),
    ("create: NUL in text", create_req(text="nul\x00here"), "message.text"),
    ("create: bell in text", create_req(text="ding\x07"), "message.text"),
    ("create: reply_to set", create_req(reply_to=VICTIM), "message.reply_to"),
    *[
        (f"get: id {bad!r}", ("GetMessage", pb.GetMessageRequest(id=bad)), "id")
        for bad in ("", *BAD_ID_CHARS)
    ],
    ("list: state 99", list_req(state=99), "state"),
    ("list: state -1", list_req(state=-1), "state"),
    ("list: bad page token", list_req(page_token="not-a-token"), "page_token"),
    ("list: page_size -1", list_req(page_size=-1), "page_size"),
    ("list: reply_to bad chars", list_req(reply_to="no spaces"), "reply_to"),
    ("list: after_sequence -1", list_req(after_sequence=-1), "after_sequence"),
    ("list: order_by unknown field", list_req(order_by="create_time desc"), "order_by"),
    ("mark: empty id", mark_req(id=""), "id"),
    ("mark: id bad chars", mark_req(id="bad id"), "id"),
    ("mark: reply empty author", mark_req(reply=pb.Message(text="t")), "reply.author"),
    ("mark: reply empty text", mark_req(reply=pb.Message(author="b")), "reply.text"),
    (
        "mark: reply author 65",
        mark_req(reply=pb.Message(author="b" * 65, text="t")),
        "reply.author",
    ),
    ("mark: reply NUL", mark_req(reply=pb.Message(author="b", text="\x00")), "reply.text"),
    (
        "mark: reply 16 KiB + 1",
        mark_req(reply=pb.Message(author="b", text="r" * 16385)),
        "reply.text",
    ),
    ("stream: max_in_flight 1001", stream_req(max_in_flight=1001), "max_in_flight"),
    ("stream: max_in_flight -1", stream_req(max_in_flight=-1), "max_in_flight"),
    ("stream: lease 0 s", stream_req(lease_duration=seconds(0)), "lease_duration"),
    ("stream: lease 0.5 s", stream_req(lease_duration=seconds(0.5)), "lease_duration"),
    ("stream: lease 1 h + 1 s", stream_req(lease_duration=seconds(3601)), "lease_duration"),
    ("stream: lease negative", stream_req(lease_duration=seconds(-5)), "lease_duration"),
    ("stream: consumer 65 chars", stream_req(consumer="c" * 65), "consumer"),
    ("stream: consumer with a newline", stream_req(consumer="bot\nFAKE LOG LINE"), "consumer"),
    ("release: empty id", release_req(id=""), "id"),
    ("release: id 129 chars", release_req(id="r" * 129), "id"),
    ("release: empty lease token", release_req(lease_token=""), "lease_token"),
    ("release: retry_after -1 s", release_req(retry_after=seconds(-1)), "retry_after"),
    ("release: retry_after 1 h + 1 s", release_req(retry_after=seconds(3601)), "retry_after"),
    ("release: reason 1025 chars", release_req(reason="e" * 1025), "reason"),
    ("release: NUL in reason", release_req(reason="bad\x00"), "reason"),
    ("extend: empty id", extend_req(id=""), "id"),
    ("extend: empty lease token", extend_req(lease_token=""), "lease_token"),
    ("extend: lease 0 s", extend_req(lease_duration=seconds(0)), "lease_duration"),
    ("extend: lease 1 h + 1 s", extend_req(lease_duration=seconds(3601)), "lease_duration"),
    (
        "extend: lease missing",
        ("ExtendLease", pb.ExtendLeaseRequest(id=VICTIM, lease_token="t")),
        "lease_duration",
    ),
    ("requeue: empty id", ("RequeueMessage", pb.RequeueMessageRequest(id="")), "id"),
    ("requeue: id bad chars", ("RequeueMessage", pb.RequeueMessageRequest(id="no!")), "id"),
]


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


@pytest.mark.parametrize(
    ("rpc_request", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_invalid_argument_names_the_field_and_changes_nothing(
    store, stub, victim, rpc_request, field
):
    rpc, request = rpc_request
    before = await snapshot(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, rpc, request)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert field in bad_request_fields(error), error
    assert field in error.details()
    assert await snapshot(stub) == before
    await assert_still_serving(store, stub)


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


async def test_wrong_lease_token_is_failed_precondition(store, stub, victim):
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
                await call(stub, rpc, request)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (rpc, caught.value)
        assert await snapshot(stub) == before, "the lease and the message are untouched"
        leased = await get(stub, VICTIM)
        assert leased.state == pb.MESSAGE_STATE_LEASED
        assert leased.lease_expire_time == delivery.lease_expire_time

        # The right token works, and then the old token is stale.
        await stub.ReleaseMessage(
            pb.ReleaseMessageRequest(id=VICTIM, lease_token=delivery.lease_token),
            timeout=RPC_TIMEOUT,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExtendLease(
                pb.ExtendLeaseRequest(
                    id=VICTIM, lease_token=delivery.lease_token, lease_duration=seconds(60)
                ),
                timeout=RPC_TIMEOUT,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await reader.close()
    await wait_pending(stub, VICTIM)
    await assert_still_serving(store, stub)


async def test_undecodable_request_is_invalid_argument(store, stub, channel, victim):
    # Raw bytes that are not a CreateMessageRequest (field 1 claims 100 bytes, 1 follows).
    raw = channel.unary_unary(
        "/ackbot.v1.MessageStore/CreateMessage",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    before = await snapshot(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\x0a\x64\x00", timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await snapshot(stub) == before
    await assert_still_serving(store, stub)
