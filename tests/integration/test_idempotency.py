"""Retries are harmless: CreateMessage and MarkProcessed are idempotent on the id, conflicting
content is refused without changing anything, and unknown ids are NOT_FOUND naming the id."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import StreamReader, create, get, list_all, seconds, timestamp_ms


async def test_create_twice_with_same_content_returns_the_stored_message(stub):
    first = await stub.CreateMessage(
        pb.CreateMessageRequest(
            message=pb.Message(
                id="retry-1", author="ana", text="hi", create_time=timestamp_ms(1_000)
            )
        ),
        timeout=RPC_TIMEOUT,
    )
    assert not first.already_existed
    again = await stub.CreateMessage(
        pb.CreateMessageRequest(
            message=pb.Message(
                id="retry-1", author="ana", text="hi", create_time=timestamp_ms(1_000)
            )
        ),
        timeout=RPC_TIMEOUT,
    )
    assert again.already_existed
    assert again.message == first.message, "the stored message, unchanged"
    assert len(await list_all(stub)) == 1


@pytest.mark.parametrize(
    ("author", "text"), [("ana", "something else"), ("bob", "hi"), ("bob", "other")]
)
async def test_create_with_same_id_and_different_content_is_already_exists(stub, author, text):
    original = await create(stub, "hi", id="taken", author="ana")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, text, id="taken", author=author)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "taken" in caught.value.details()
    assert await list_all(stub) == [original], "nothing changed"


async def test_mark_processed_twice_keeps_the_first_reply(stub, settler):
    await create(stub, "answer me", id="mp-1")
    request = pb.MarkProcessedRequest(id="mp-1", reply=pb.Message(author="bot", text="first"))
    first = await settler.MarkProcessed(request, timeout=RPC_TIMEOUT)
    assert not first.already_processed
    assert first.message.state == pb.MESSAGE_STATE_PROCESSED
    assert first.message.reply_id == first.reply.id
    assert first.reply.reply_to == "mp-1"
    assert first.reply.state == pb.MESSAGE_STATE_PROCESSED

    # The same retry, and a late second opinion: both OK, neither stores anything.
    for text in ("first", "second"):
        again = await settler.MarkProcessed(
            pb.MarkProcessedRequest(id="mp-1", reply=pb.Message(author="bot", text=text)),
            timeout=RPC_TIMEOUT,
        )
        assert again.already_processed
        assert again.reply.id == first.reply.id
        assert again.reply.text == "first"
        assert again.message.reply_id == first.reply.id

    replies = await list_all(stub, reply_to="mp-1")
    assert [r.id for r in replies] == [first.reply.id]
    assert len(await list_all(stub)) == 2


async def test_racing_mark_processed_calls_store_one_reply(stub, settler):
    await create(stub, "race me", id="race-1")

    async def answer(n: int):
        return await settler.MarkProcessed(
            pb.MarkProcessedRequest(id="race-1", reply=pb.Message(author=f"bot{n}", text=f"{n}")),
            timeout=RPC_TIMEOUT,
        )

    results = await asyncio.gather(*(answer(n) for n in range(20)))
    winners = [r for r in results if not r.already_processed]
    assert len(winners) == 1, "the first commit wins, the others are told so"
    assert {r.reply.id for r in results} == {winners[0].reply.id}
    assert [r.id for r in await list_all(stub, reply_to="race-1")] == [winners[0].reply.id]


async def test_mark_processed_without_reply_processes_with_no_reply(stub, settler):
    await create(stub, "no answer needed", id="quiet-1")
    response = await settler.MarkProcessed(
        pb.MarkProcessedRequest(id="quiet-1"), timeout=RPC_TIMEOUT
    )
    assert response.message.state == pb.MESSAGE_STATE_PROCESSED
    assert not response.HasField("reply")
    assert response.message.reply_id == ""
    assert await list_all(stub, reply_to="quiet-1") == []


async def test_mark_processed_with_a_stale_lease_token_still_wins(stub, settler):
    await create(stub, "leased", id="stale-1")
    reader = StreamReader(stub, consumer="stale-test", max_in_flight=1)
    try:
        delivery = await reader.next()
        assert delivery.message.id == "stale-1"
        response = await settler.MarkProcessed(
            pb.MarkProcessedRequest(
                id="stale-1", lease_token="not-the-lease", reply=pb.Message(author="b", text="ok")
            ),
            timeout=RPC_TIMEOUT,
        )
        assert response.message.state == pb.MESSAGE_STATE_PROCESSED
        assert not response.already_processed
    finally:
        await reader.close()


MISSING = "no-such-message-42"

NOT_FOUND_CALLS = {
    "GetMessage": lambda stub: stub.GetMessage(
        pb.GetMessageRequest(id=MISSING), timeout=RPC_TIMEOUT
    ),
    "MarkProcessed": lambda stub: stub.MarkProcessed(
        pb.MarkProcessedRequest(id=MISSING, reply=pb.Message(author="b", text="t")),
        timeout=RPC_TIMEOUT,
    ),
    "ReleaseMessage": lambda stub: stub.ReleaseMessage(
        pb.ReleaseMessageRequest(id=MISSING, lease_token="token", reason="failed"),
        timeout=RPC_TIMEOUT,
    ),
    "ExtendLease": lambda stub: stub.ExtendLease(
        pb.ExtendLeaseRequest(id=MISSING, lease_token="token", lease_duration=seconds(30)),
        timeout=RPC_TIMEOUT,
    ),
    "RequeueMessage": lambda stub: stub.RequeueMessage(
        pb.RequeueMessageRequest(id=MISSING), timeout=RPC_TIMEOUT
    ),
}


@pytest.mark.parametrize("rpc", sorted(NOT_FOUND_CALLS))
async def test_unknown_id_is_not_found_naming_the_id(stub, settler, rpc):
    await create(stub, "bystander", id="bystander")
    before = await list_all(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await NOT_FOUND_CALLS[rpc](settler)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert MISSING in caught.value.details()
    assert await list_all(stub) == before
    assert (await get(stub, "bystander")).state == pb.MESSAGE_STATE_PENDING
