"""Deleting and holding with real processes (issue 19): a bot stopped (SIGSTOP) while it holds
a lease, the message deleted meanwhile, then continued: nothing is stored, the bot settles and
goes on; a retried create of a deleted id is refused; HELD messages reach no bot until approved,
then at once; watchers see the delete. On SQLite here; tests/integration/test_delete_hold_pg.py
runs the cross-store cases on PostgreSQL with two stores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from ackbot.client import AlreadyExists, Client, FailedPrecondition, NotFound
from ackbot.common.status import error_info, status_of
from ackbot.testing import RPC_TIMEOUT, Service, bot_service, responders, wait_until
from ackbot.testing.fake_llm import FakeLLM
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import create, get, list_all, wait_state

from .test_cli import ackbot, json_lines

pytestmark = pytest.mark.slow

# The bot's answer takes this long (the "slow" responder), so that it is stopped mid-work.
WORK_SECONDS = 1.5
# Approve to delivery: the approval wakes the streams, no poll is waited for.
APPROVED_DELIVERY_SECONDS = 1.0


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def reason(error: grpc.aio.AioRpcError) -> str:
    return error_info(status_of(error))[0]


@contextlib.contextmanager
def stopped(service: Service):
    """The service's process stopped (SIGSTOP) for the block, continued (SIGCONT) after."""
    assert service.proc is not None
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)


async def delete_while_the_bot_works(
    bot: Service, deleter: pb_grpc.MessageStoreStub, reader: pb_grpc.MessageStoreStub
) -> None:
    """The bot (max_in_flight 1) holds `doomed`'s lease; stopped, the message is deleted through
    `deleter`; continued, it finishes its work and its MarkProcessed stores nothing. Then it
    answers the next message, which proves its one slot was given back."""
    await create(reader, "answer me slowly", id="doomed")
    await wait_state(reader, "doomed", pb.MESSAGE_STATE_LEASED, within=15)
    with stopped(bot):
        deleted = await deleter.DeleteMessage(
            pb.DeleteMessageRequest(id="doomed"), timeout=RPC_TIMEOUT
        )
        assert (deleted.deleted_count, deleted.already_deleted) == (1, False)
        assert deleted.message.state == pb.MESSAGE_STATE_DELETED
        assert (deleted.message.author, deleted.message.text) == ("", "")

    def settled_in_log() -> bool:
        return "message was deleted; reply dropped message_id=doomed" in bot.log_text()

    await wait_until(settled_in_log, within=15, what="the bot settled the deleted message")
    await create(reader, "and then me", id="next")
    await wait_state(reader, "next", pb.MESSAGE_STATE_PROCESSED, within=15)
    # Nothing of the deleted message was answered or stored, and it did not go DEAD.
    everything = await list_all(reader) + await list_all(reader, state=pb.MESSAGE_STATE_DELETED)
    assert [m.id for m in everything if m.reply_to == "doomed"] == []
    assert [(m.id, m.state) for m in everything if m.id == "doomed"] == [
        ("doomed", pb.MESSAGE_STATE_DELETED)
    ]
    assert " ERROR " not in bot.log_text()


async def test_a_message_deleted_while_its_bot_is_stopped_is_never_answered(stub, start_bot):
    bot = await start_bot(
        max_in_flight=1,
        responder=responders.spec("slow"),
        env={responders.DELAY_ENV: str(WORK_SECONDS)},
    )
    await delete_while_the_bot_works(bot, stub, stub)


async def test_deleted_ids_stay_taken_and_are_not_found(stub):
    original = await create(stub, "regrettable", id="gone", author="ana")
    await create(stub, "a reply is stored by MarkProcessed", id="other")
    await stub.DeleteMessage(pb.DeleteMessageRequest(id="gone"), timeout=RPC_TIMEOUT)

    retried = await rpc_error(
        stub.CreateMessage(
            pb.CreateMessageRequest(
                message=pb.Message(id="gone", author="ana", text="regrettable")
            ),
            timeout=RPC_TIMEOUT,
        )
    )
    assert retried.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(retried) == "MESSAGE_DELETED"
    batch = await stub.BatchCreateMessages(
        pb.BatchCreateMessagesRequest(
            requests=[pb.CreateMessageRequest(message=pb.Message(id="gone", author="bo", text="x"))]
        ),
        timeout=RPC_TIMEOUT,
    )
    assert batch.results[0].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert error_info(batch.results[0].error)[0] == "MESSAGE_DELETED"

    missing = await rpc_error(stub.GetMessage(pb.GetMessageRequest(id="gone"), timeout=RPC_TIMEOUT))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert reason(missing) == "MESSAGE_DELETED"
    again = await stub.DeleteMessage(pb.DeleteMessageRequest(id="gone"), timeout=RPC_TIMEOUT)
    assert (again.already_deleted, again.deleted_count) == (True, 0)
    unknown = await rpc_error(
        stub.DeleteMessage(pb.DeleteMessageRequest(id="never"), timeout=RPC_TIMEOUT)
    )
    assert (unknown.code(), reason(unknown)) == (grpc.StatusCode.NOT_FOUND, "MESSAGE_NOT_FOUND")

    assert [m.id for m in await list_all(stub)] == ["other"]
    tombstones = await list_all(stub, state=pb.MESSAGE_STATE_DELETED)
    assert [(m.id, m.sequence, m.author, m.text) for m in tombstones] == [
        ("gone", original.sequence, "", "")
    ]
    stats = await stub.GetStats(pb.GetStatsRequest(), timeout=RPC_TIMEOUT)
    assert (stats.deleted_count, stats.pending_count) == (1, 1)


@contextlib.asynccontextmanager
async def watching(stub) -> AsyncIterator[asyncio.Queue[pb.WatchMessagesResponse]]:
    events: asyncio.Queue[pb.WatchMessagesResponse] = asyncio.Queue()
    call = stub.WatchMessages(pb.WatchMessagesRequest(after_sequence=0))

    async def pump() -> None:
        async for event in call:
            events.put_nowait(event)

    task = asyncio.create_task(pump())
    try:
        yield events
    finally:
        call.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task


async def next_event(events, wanted) -> pb.WatchMessagesResponse:
    deadline = time.monotonic() + 10
    while True:
        event = await asyncio.wait_for(events.get(), deadline - time.monotonic())
        if wanted(event):
            return event


async def test_watchers_see_a_deleted_event_with_the_tombstone(stub):
    async with watching(stub) as events:
        await create(stub, "short-lived", id="w1")
        await next_event(events, lambda e: e.message.id == "w1")
        await stub.DeleteMessage(pb.DeleteMessageRequest(id="w1"), timeout=RPC_TIMEOUT)

        event = await next_event(events, lambda e: e.type != pb.WATCH_EVENT_TYPE_CREATED)

    assert event.type == pb.WATCH_EVENT_TYPE_DELETED
    assert (event.message.id, event.message.state) == ("w1", pb.MESSAGE_STATE_DELETED)
    assert (event.message.author, event.message.text) == ("", "")


async def approve_and_time(approver, reader, message_id: str) -> float:
    """Approves through `approver`; seconds until the bot has it (LEASED or further)."""
    started = time.monotonic()
    approved = await approver.ApproveMessage(
        pb.ApproveMessageRequest(id=message_id), timeout=RPC_TIMEOUT
    )
    assert approved.message.state == pb.MESSAGE_STATE_PENDING

    async def delivered() -> bool:
        state = (await get(reader, message_id)).state
        return state in (pb.MESSAGE_STATE_LEASED, pb.MESSAGE_STATE_PROCESSED)

    await wait_until(delivered, within=10, interval=0.01, what=f"{message_id} delivered")
    return time.monotonic() - started


async def test_held_messages_reach_no_bot_until_approved(start_store, tmp_path):
    store = await start_store.started(args=["--hold-new-messages"])
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        bot = await bot_service(tmp_path, store.address).astart()
        try:
            held = await create(stub, "wait for a moderator", id="h1")
            assert held.state == pb.MESSAGE_STATE_HELD
            trusted = await stub.CreateMessage(
                pb.CreateMessageRequest(
                    message=pb.Message(id="p1", author="tester", text="trusted"), hold=False
                ),
                timeout=RPC_TIMEOUT,
            )
            assert trusted.message.state == pb.MESSAGE_STATE_PENDING
            # p1 came after h1: answered while h1 waits proves h1 is never handed out.
            await wait_state(stub, "p1", pb.MESSAGE_STATE_PROCESSED, within=15)
            assert (await get(stub, "h1")).state == pb.MESSAGE_STATE_HELD
            early = await rpc_error(
                stub.MarkProcessed(pb.MarkProcessedRequest(id="h1"), timeout=RPC_TIMEOUT)
            )
            assert (early.code(), reason(early)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "MESSAGE_HELD",
            )
            stats = await stub.GetStats(pb.GetStatsRequest(), timeout=RPC_TIMEOUT)
            assert stats.held_count == 1
            listed = json_lines(await ackbot("--store", store.address, "--json", "held"))
            assert [m["id"] for m in listed] == ["h1"]

            assert await approve_and_time(stub, stub, "h1") < APPROVED_DELIVERY_SECONDS
            await wait_state(stub, "h1", pb.MESSAGE_STATE_PROCESSED, within=15)
            again = await rpc_error(
                stub.ApproveMessage(pb.ApproveMessageRequest(id="h1"), timeout=RPC_TIMEOUT)
            )
            assert (again.code(), reason(again)) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "NOT_HELD",
            )
        finally:
            bot.cleanup()


async def test_the_cli_deletes_and_approves(store, stub):
    await stub.CreateMessage(
        pb.CreateMessageRequest(message=pb.Message(id="c1", author="a", text="x"), hold=True),
        timeout=RPC_TIMEOUT,
    )
    approved = json_lines(await ackbot("--store", store.address, "--json", "approve", "c1"))
    assert approved[0]["state"] == "MESSAGE_STATE_PENDING"
    deleted = json_lines(await ackbot("--store", store.address, "--json", "delete", "c1"))
    assert deleted[0]["deleted_count"] == 1
    text = await ackbot("--store", store.address, "delete", "c1")
    assert text.returncode == 0
    assert "already deleted" in text.stdout
    missing = await ackbot("--store", store.address, "approve", "c1")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr


async def test_held_messages_are_no_part_of_a_conversation_for_the_bot(stub, start_bot):
    # Held before and after the message the bot answers: the earlier one is not in the model's
    # context (unmoderated text), the later one does not supersede it (it may never be approved).
    for message_id, hold in (("t-early", True), ("t-one", False), ("t-late", True)):
        await stub.CreateMessage(
            pb.CreateMessageRequest(
                message=pb.Message(
                    id=message_id, author="ana", text=message_id, conversation_id="t"
                ),
                hold=hold,
            ),
            timeout=RPC_TIMEOUT,
        )
    with FakeLLM() as fake_llm:
        await start_bot(
            persona="ava",
            args=[
                *("--backend", "openai", "--llm-url", fake_llm.openai_url),
                *("--llm-model", "fake-1", "--llm-context-turns", "3"),
            ],
        )
        answered = await wait_state(stub, "t-one", pb.MESSAGE_STATE_PROCESSED, within=30)
        [request] = fake_llm.requests_for("t-one")

    assert answered.reply_id  # answered, not superseded by t-late
    assert [m["content"] for m in request.body["messages"][1:]] == ["ana: t-one"]


async def test_the_client_library_holds_approves_and_deletes(store):
    async with Client.connect(store.address) as client:
        held = await client.create("wait", author="ana", id="lib-1", hold=True)
        assert held.message.state == pb.MESSAGE_STATE_HELD
        approved = await client.approve("lib-1")
        assert approved.state == pb.MESSAGE_STATE_PENDING
        with pytest.raises(FailedPrecondition) as not_held:
            await client.approve("lib-1")
        assert not_held.value.reason == "NOT_HELD"

        deleted = await client.delete("lib-1")
        assert (deleted.deleted_count, deleted.already_deleted) == (1, False)
        assert (await client.delete("lib-1")).already_deleted
        with pytest.raises(NotFound) as gone:
            await client.get("lib-1")
        assert gone.value.reason == "MESSAGE_DELETED"
        with pytest.raises(AlreadyExists) as taken:
            await client.create("wait", author="ana", id="lib-1")
        assert taken.value.reason == "MESSAGE_DELETED"
