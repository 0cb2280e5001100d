"""BatchCreateMessages against a real store: every item answered on its own and in order, the
call refused whole only for call-level problems, the items of one call in one transaction, and
the stored result identical to CreateMessage's for the same input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from ackbot.common.limits import MAX_BATCH_CREATE_ITEMS
from ackbot.store.errors import ERROR_DOMAIN
from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import (
    bad_request_fields,
    create,
    get,
    status_bad_request_fields,
    timestamp_ms,
    unique_id,
)
from tests.support.metrics_scrape import METRICS, scrape, value
from tests.support.postgres import fresh_database


def item(id: str = "", author: str = "ana", text: str = "hi", **fields) -> pb.CreateMessageRequest:
    return pb.CreateMessageRequest(message=pb.Message(id=id, author=author, text=text, **fields))


async def batch(stub, *items: pb.CreateMessageRequest) -> list[pb.BatchCreateMessagesResult]:
    response = await stub.BatchCreateMessages(
        pb.BatchCreateMessagesRequest(requests=items), timeout=RPC_TIMEOUT
    )
    return list(response.results)


def reason(status) -> tuple[str, str, dict[str, str]]:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, info.domain, dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {status}")


async def test_each_item_is_answered_on_its_own_in_order(stub):
    same, taken, fresh = unique_id("same"), unique_id("taken"), unique_id("fresh")
    await create(stub, "stored before", id=same, author="ana")
    await create(stub, "stored before", id=taken, author="ana")
    results = await batch(
        stub,
        item(fresh, text="new one"),
        item(same, text="stored before"),  # a retried create
        item(author="", text=""),  # invalid: two rules broken
        item(taken, text="different text"),  # the id is someone else's
        item(text="no id: the store assigns one"),
        item(fresh, text="new one"),  # the same id again in this call: a retry of item 0
    )
    assert [r.WhichOneof("result") for r in results] == [
        "response",
        "response",
        "error",
        "error",
        "response",
        "response",
    ]
    assert results[0].response.message.id == fresh
    assert not results[0].response.already_existed
    assert results[1].response.already_existed
    assert results[1].response.message.text == "stored before"

    invalid = results[2].error
    assert invalid.code == code_pb2.INVALID_ARGUMENT
    assert status_bad_request_fields(invalid) == [
        "requests[2].message.author",
        "requests[2].message.text",
    ]
    assert "requests[2].message.author" in invalid.message

    id_taken = results[3].error
    assert id_taken.code == code_pb2.ALREADY_EXISTS
    assert reason(id_taken) == ("ID_TAKEN", ERROR_DOMAIN, {"message_id": taken})
    assert (await get(stub, taken)).text == "stored before"

    assert results[4].response.message.id
    assert results[5].response.already_existed
    assert results[5].response.message.sequence == results[0].response.message.sequence
    assert results[4].response.message.sequence > results[0].response.message.sequence


async def test_a_refused_item_writes_nothing(stub):
    bad = unique_id("bad")
    [result] = await batch(stub, item(bad, text="x", reply_to="someone"))
    assert status_bad_request_fields(result.error) == ["requests[0].message.reply_to"]
    error = await _refused(stub.GetMessage(pb.GetMessageRequest(id=bad), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize("count", [0, MAX_BATCH_CREATE_ITEMS + 1])
async def test_the_item_count_is_limited_for_the_whole_call(stub, count):
    request = pb.BatchCreateMessagesRequest(requests=[item(text=str(i)) for i in range(count)])
    error = await _refused(stub.BatchCreateMessages(request, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["requests"]
    assert f"1 to {MAX_BATCH_CREATE_ITEMS} items (got {count})" in (error.details() or "")


async def test_the_largest_batch_is_accepted(stub):
    ids = [unique_id("max") for _ in range(MAX_BATCH_CREATE_ITEMS)]
    results = await batch(stub, *(item(message_id, author="a", text="t") for message_id in ids))
    assert [r.response.message.id for r in results] == ids


async def test_the_request_size_limit_is_for_the_whole_call(start_store):
    store = await start_store.started(args=["--max-request-bytes", "4096"])
    async with store.aio_channel() as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        items = [item(unique_id("big"), text="x" * 1000) for _ in range(5)]
        error = await _refused(
            stub.BatchCreateMessages(
                pb.BatchCreateMessagesRequest(requests=items), timeout=RPC_TIMEOUT
            )
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Nothing of it was stored.
        missing = await _refused(
            stub.GetMessage(pb.GetMessageRequest(id=items[0].message.id), timeout=RPC_TIMEOUT)
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_the_items_of_one_call_commit_in_one_transaction(start_store):
    store = await start_store.started(args=METRICS)
    async with store.aio_channel() as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        before = value(await scrape(store), "ackbot_group_commit_batch_size_count")
        results = await batch(stub, *(item(unique_id("tx"), text=str(i)) for i in range(50)))
        assert all(r.WhichOneof("result") == "response" for r in results)
        after = value(await scrape(store), "ackbot_group_commit_batch_size_count")
        assert after - before == 1


async def test_unary_and_batch_creates_store_the_same_message(stub):
    """The contract: an item of BatchCreateMessages is stored and answered exactly as the same
    CreateMessage would be, field for field but for the id and the store's own stamps."""
    shapes = [
        {"author": "ana", "text": "plain"},
        {"author": "bo", "text": "line\nbreaks\tand tabs", "create_time": timestamp_ms(1_700)},
        {"author": "ünï", "text": "ünïcödé ✓"},
    ]
    for shape in shapes:
        unary_id, batch_id = unique_id("u"), unique_id("b")
        unary = await stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(id=unary_id, **shape)), timeout=RPC_TIMEOUT
        )
        [result] = await batch(
            stub, pb.CreateMessageRequest(message=pb.Message(id=batch_id, **shape))
        )
        for created in (unary, result.response):
            assert not created.already_existed
        stored_unary, stored_batch = await get(stub, unary_id), await get(stub, batch_id)
        assert _comparable(unary.message) == _comparable(result.response.message)
        assert _comparable(stored_unary) == _comparable(stored_batch)
        # A retry by either path finds the other's message.
        again = await stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(id=batch_id, **shape)), timeout=RPC_TIMEOUT
        )
        [again_batch] = await batch(
            stub, pb.CreateMessageRequest(message=pb.Message(id=unary_id, **shape))
        )
        assert again.already_existed
        assert again_batch.response.already_existed
    # The same refusals, with the field named by each call's own path.
    bad = pb.Message(author="", text="x" * 20_000)
    unary_error = await _refused(
        stub.CreateMessage(pb.CreateMessageRequest(message=bad), timeout=RPC_TIMEOUT)
    )
    [batch_error] = await batch(stub, pb.CreateMessageRequest(message=bad))
    assert batch_error.error.code == unary_error.code().value[0]
    assert status_bad_request_fields(batch_error.error) == [
        f"requests[0].{field}" for field in bad_request_fields(unary_error)
    ]


def _comparable(message: pb.Message) -> pb.Message:
    copy = pb.Message()
    copy.CopyFrom(message)
    for field in ("id", "sequence", "receive_time"):
        copy.ClearField(field)
    return copy


@pytest.mark.postgres
@pytest.mark.slow
async def test_two_stores_on_postgres_batch_the_same_ids_once(start_store):
    """Batches with the same ids sent at once to two stores of one database: each id is
    stored once, and every item is answered created or already existed, never ID_TAKEN."""
    async with fresh_database() as url:
        stores = [await start_store.started(name=f"pg{n}", args=["--db", url]) for n in range(2)]
        ids = [unique_id("pg") for _ in range(200)]
        items = [item(message_id, text=f"same {message_id}") for message_id in ids]
        channels = [store.aio_channel() for store in stores]
        try:
            stubs = [pb_grpc.MessageStoreStub(channel) for channel in channels]
            answers = await asyncio.gather(
                *(
                    batch(stub, *items[offset:], *items[:offset])
                    for stub in stubs
                    for offset in (0, 100)
                )
            )
            outcomes: dict[str, list[bool]] = {}
            for results in answers:
                for result in results:
                    assert result.WhichOneof("result") == "response", result
                    message = result.response.message
                    outcomes.setdefault(message.id, []).append(result.response.already_existed)
            assert set(outcomes) == set(ids)
            assert all(sorted(flags) == [False, True, True, True] for flags in outcomes.values())
        finally:
            for channel in channels:
                await channel.close()
