"""Conversations through a real store: `conversation_id` is stored, compared on a retried
create, filters ListMessages (with the other filters and page tokens), and a reply inherits its
original's; a conversation is delivered one message at a time in order, to one stream or to
several bots. On SQLite, and on PostgreSQL when ACKBOT_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import itertools

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ackbot.testing import RPC_TIMEOUT, bot_service, responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import StreamReader
from tests.support.postgres import fresh_database


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
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


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return error_info(error).reason


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


async def test_a_stream_gets_the_next_message_of_a_conversation_only_once_the_first_is_settled(
    conv_stub,
):
    reader = StreamReader(conv_stub, consumer="ordered", max_in_flight=10)
    try:
        await reader.wait_open()
        # Claim on create: each create rides with the waiting stream's claim.
        for message_id in ("o1", "o2", "o3"):
            await create(conv_stub, message_id, "thread-o")
        await create(conv_stub, "free")
        first = await reader.take(2)
        assert sorted(d.message.id for d in first) == ["free", "o1"]
        await reader.expect_nothing(0.5)

        await conv_stub.MarkProcessed(
            pb.MarkProcessedRequest(id="o1", reply=pb.Message(author="bot", text="one")),
            timeout=RPC_TIMEOUT,
        )
        second = await reader.next()
        assert second.message.id == "o2"
        await conv_stub.ReleaseMessage(
            pb.ReleaseMessageRequest(id="o2", lease_token=second.lease_token, reason="boom"),
            timeout=RPC_TIMEOUT,
        )
        again = await reader.next()
        assert again.message.id == "o2", "a released message keeps its place"
        await conv_stub.MarkProcessed(pb.MarkProcessedRequest(id="o2"), timeout=RPC_TIMEOUT)
        assert (await reader.next()).message.id == "o3"
    finally:
        await reader.close()


async def test_several_bots_answer_each_conversation_in_order_one_message_at_a_time(
    db_args, start_store, tmp_path
):
    store = await start_store.started(name="order-store", args=db_args)
    delay = 0.4
    bots = [
        bot_service(
            tmp_path,
            store.address,
            persona=f"order-{number}",
            responder=responders.spec("slow"),
            env={responders.DELAY_ENV: str(delay)},
        )
        for number in range(3)
    ]
    try:
        for bot in bots:
            await bot.astart()
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            threads = {f"t{t}": [f"t{t}-m{m}" for m in range(4)] for t in range(3)}
            for m in range(4):
                for thread, ids in threads.items():
                    await create(stub, ids[m], thread)

            async def all_processed() -> bool:
                listed = await stub.ListMessages(
                    pb.ListMessagesRequest(state=pb.MESSAGE_STATE_PROCESSED, page_size=100),
                    timeout=RPC_TIMEOUT,
                )
                return len(listed.messages) == 24

            await wait_until(all_processed, within=60, what="every message answered")
            for thread, ids in threads.items():
                listed = await stub.ListMessages(
                    pb.ListMessagesRequest(conversation_id=thread), timeout=RPC_TIMEOUT
                )
                originals = {m.id: m for m in listed.messages if not m.reply_to}
                replies = {m.reply_to: m for m in listed.messages if m.reply_to}
                assert sorted(replies) == ids
                # Each answer was written after the previous one was stored: the responder
                # alone takes `delay`, so processed times lie at least that far apart.
                times = [originals[i].process_time.ToNanoseconds() for i in ids]
                gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(times)]
                assert all(gap >= delay for gap in gaps), f"{thread} overlapped: gaps {gaps}"
                sequences = [replies[i].sequence for i in ids]
                assert sequences == sorted(sequences)
    finally:
        for bot in bots:
            bot.cleanup()


async def test_a_reply_written_before_a_newer_original_is_refused_as_stale(conv_stub):
    first = await create(conv_stub, "f1", "thread-f")
    second = await create(conv_stub, "f2", "thread-f")
    loose = await create(conv_stub, "f-loose")

    def mark(message_id: str, context_sequence: int) -> pb.MarkProcessedRequest:
        return pb.MarkProcessedRequest(
            id=message_id,
            reply=pb.Message(author="bot", text=f"re {message_id}"),
            context_sequence=context_sequence,
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await conv_stub.MarkProcessed(mark("f1", first.sequence), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info.reason == "CONTEXT_STALE"
    assert dict(info.metadata) == {"message_id": "f1", "newest_message_id": "f2"}
    got = await conv_stub.GetMessage(pb.GetMessageRequest(id="f1"), timeout=RPC_TIMEOUT)
    assert (got.message.state, got.message.reply_id) == (pb.MESSAGE_STATE_PENDING, "")

    # The newest is answered from all of it; its reply is no newer original for f1.
    await conv_stub.MarkProcessed(mark("f2", second.sequence), timeout=RPC_TIMEOUT)
    answered = await conv_stub.MarkProcessed(mark("f1", second.sequence), timeout=RPC_TIMEOUT)
    assert answered.reply.conversation_id == "thread-f"
    retried = await conv_stub.MarkProcessed(mark("f1", first.sequence), timeout=RPC_TIMEOUT)
    assert retried.already_processed, "a retry of a processed message is not fenced"
    alone = await conv_stub.MarkProcessed(mark("f-loose", 1), timeout=RPC_TIMEOUT)
    assert alone.reply.text == "re f-loose", "no conversation, no fence"
    assert loose.sequence > 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await conv_stub.MarkProcessed(mark("f2", -1), timeout=RPC_TIMEOUT)
    assert violations(caught.value) == ["context_sequence"]
