"""Conversations through a real store: `conversation_id` is stored, compared on a retried
create, filters ListMessages (with the other filters and page tokens), and a reply inherits its
original's. On SQLite, and on PostgreSQL when ACKBOT_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .postgres import fresh_database, requires_postgres


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=[pytest.mark.postgres, requires_postgres]),
    ]
)
async def db_args(request):
    if request.param == "sqlite":
        yield []
    else:
        async with fresh_database() as url:
            yield ["--db", url]


@pytest.fixture
async def conv_stub(db_args, start_store):
    store = await start_store.started(name="conv-store", args=db_args)
    async with grpc.aio.insecure_channel(store.address) as channel:
        yield pb_grpc.MessageStoreStub(channel)


async def create(stub, message_id: str, conversation: str = "", text: str = "") -> pb.Message:
    message = pb.Message(
        id=message_id,
        author="ana",
        text=text or f"text of {message_id}",
        conversation_id=conversation,
    )
    response = await stub.CreateMessage(
        pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT
    )
    return response.message


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


async def test_a_message_keeps_its_conversation_and_a_retry_must_name_the_same(conv_stub):
    stored = await create(conv_stub, "c1", "thread-1")
    assert stored.conversation_id == "thread-1"
    got = await conv_stub.GetMessage(pb.GetMessageRequest(id="c1"), timeout=RPC_TIMEOUT)
    assert got.message.conversation_id == "thread-1"

    retried = await conv_stub.CreateMessage(
        pb.CreateMessageRequest(
            message=pb.Message(id="c1", author="ana", text="text of c1", conversation_id="thread-1")
        ),
        timeout=RPC_TIMEOUT,
    )
    assert retried.already_existed
    for other in ("thread-2", ""):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(conv_stub, "c1", other)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(caught.value) == "ID_TAKEN"


@pytest.mark.parametrize(
    ("value", "rule"),
    [("has space", "may contain only"), ("x" * 129, "at most 128 characters")],
)
async def test_a_malformed_conversation_id_is_refused_naming_the_field(conv_stub, value, rule):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(conv_stub, "bad", value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["message.conversation_id"]
    assert rule in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await conv_stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=value), timeout=RPC_TIMEOUT
        )
    assert violations(caught.value) == ["conversation_id"]


async def test_list_messages_filters_by_conversation_with_the_other_filters_and_pages(conv_stub):
    for number in range(7):
        await create(conv_stub, f"a{number}", "thread-a")
        await create(conv_stub, f"b{number}", "thread-b")
        await create(conv_stub, f"n{number}")
    await conv_stub.MarkProcessed(
        pb.MarkProcessedRequest(id="a0", reply=pb.Message(author="bot", text="hi")),
        timeout=RPC_TIMEOUT,
    )

    async def listed(**fields) -> list[str]:
        ids, token = [], ""
        while True:
            response = await conv_stub.ListMessages(
                pb.ListMessagesRequest(page_size=3, page_token=token, **fields),
                timeout=RPC_TIMEOUT,
            )
            ids += [m.id for m in response.messages]
            token = response.next_page_token
            if not token:
                return ids

    thread_a = await listed(conversation_id="thread-a")
    assert thread_a[:7] == [f"a{n}" for n in range(7)]
    assert len(thread_a) == 8, "the reply is in its original's conversation"
    newest_first = await listed(conversation_id="thread-b", order_by="sequence desc")
    assert newest_first == [f"b{n}" for n in reversed(range(7))]
    pending_a = await listed(conversation_id="thread-a", state=pb.MESSAGE_STATE_PENDING)
    assert pending_a == [f"a{n}" for n in range(1, 7)]
    assert await listed(conversation_id="thread-a", reply_to="a0") == thread_a[7:]
    assert await listed(conversation_id="nobody") == []


async def test_a_reply_inherits_its_originals_conversation(conv_stub):
    await create(conv_stub, "q1", "thread-q")
    await create(conv_stub, "q2")

    answered = await conv_stub.MarkProcessed(
        pb.MarkProcessedRequest(id="q1", reply=pb.Message(author="bot", text="answer")),
        timeout=RPC_TIMEOUT,
    )
    same = await conv_stub.MarkProcessed(
        pb.MarkProcessedRequest(id="q1", reply=pb.Message(author="bot", text="again")),
        timeout=RPC_TIMEOUT,
    )
    unthreaded = await conv_stub.MarkProcessed(
        pb.MarkProcessedRequest(id="q2", reply=pb.Message(author="bot", text="answer")),
        timeout=RPC_TIMEOUT,
    )

    assert answered.reply.conversation_id == "thread-q"
    assert same.already_processed
    assert same.reply.id == answered.reply.id
    assert unthreaded.reply.conversation_id == ""


@pytest.mark.parametrize("given", ["thread-other", "thread-r"])
async def test_a_reply_may_name_only_its_originals_conversation(conv_stub, given):
    await create(conv_stub, "r1", "thread-r")
    await create(conv_stub, "r2")

    for original in ("r1", "r2"):
        request = pb.MarkProcessedRequest(
            id=original, reply=pb.Message(author="bot", text="answer", conversation_id=given)
        )
        if original == "r1" and given == "thread-r":
            response = await conv_stub.MarkProcessed(request, timeout=RPC_TIMEOUT)
            assert response.reply.conversation_id == "thread-r"
            continue
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await conv_stub.MarkProcessed(request, timeout=RPC_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == ["reply.conversation_id"]
        got = await conv_stub.GetMessage(pb.GetMessageRequest(id=original), timeout=RPC_TIMEOUT)
        assert got.message.state == pb.MESSAGE_STATE_PENDING, "nothing was written"
