"""A bot given several stores of one database: a settling call that finds its store unreachable
is made through the next one, and the worker's stream moves from store to store, round robin, as
each one stops. Real stores in the test's loop; where the stores must share a database, on
PostgreSQL (a SQLite file has one owner)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ackbot.bot.config import BotConfig
from ackbot.bot.policy import Worker
from ackbot.bot.responder import IncomingMessage
from ackbot.client.outcomes import Outcome
from ackbot.client.router import StoreClient
from ackbot.client.streams import DeliveryStream
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .conftest import skip_without_postgres
from .helpers import closed_port, create, get, replies_to, running, wait_state, wait_until

# Settling calls here succeed or fail at once; a budget this size only bounds a hang.
BUDGET = 10.0


def reply(text: str = "an answer") -> pb.Message:
    return pb.Message(author="bot", text=text)


def client_of(channels, *addresses: str) -> StoreClient:
    return StoreClient({address: channels(address) for address in addresses})


def logged(caplog, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


# -- settling calls -----------------------------------------------------------------------------


async def test_a_settle_goes_past_a_store_that_is_not_there(store, stub, channels, caplog):
    caplog.set_level(logging.WARNING, logger="ackbot")
    dead = f"127.0.0.1:{closed_port()}"
    client = client_of(channels, dead, store.address)
    await create(stub, "m-1", "hello")

    result = await client.mark_processed("m-1", "", reply(), budget_seconds=BUDGET)

    assert result.outcome is Outcome.SETTLED
    assert (await get(stub, "m-1")).state == pb.MESSAGE_STATE_PROCESSED
    assert logged(caplog, f"MarkProcessed failed on {dead} (UNAVAILABLE), trying {store.address}")


async def test_an_answer_from_a_live_store_is_final_and_not_asked_of_the_next(
    start_store, channels
):
    # Two stores on separate files: "m-1" exists only in the second, so a NOT_FOUND from the
    # first is the answer, and the second never hears of the call.
    first, second = await start_store(), await start_store()
    second_stub = pb_grpc.MessageStoreStub(channels(second.address))
    await create(second_stub, "m-1", "hello")
    client = client_of(channels, first.address, second.address)

    result = await client.mark_processed("m-1", "", reply(), budget_seconds=BUDGET)

    assert result.outcome is Outcome.NOT_FOUND
    assert (await get(second_stub, "m-1")).state == pb.MESSAGE_STATE_PENDING


async def test_settles_go_first_to_the_store_whose_stream_opened_last(start_store, channels):
    # Separate files, the same ids in both: which store a settle reached shows in its file.
    first, second = await start_store(), await start_store()
    stubs = [pb_grpc.MessageStoreStub(channels(s.address)) for s in (first, second)]
    for stub in stubs:
        await create(stub, "before", "hello")
        await create(stub, "after", "hello")
    client = client_of(channels, first.address, second.address)

    assert (await client.mark_processed("before", "", reply(), budget_seconds=BUDGET)).outcome is (
        Outcome.SETTLED
    )
    stream = client.stream(store=1, consumer="test", max_in_flight=1, lease_seconds=30.0)
    try:
        assert await stream.wait_open(), stream.end_reason
        assert stream.address == second.address
        result = await client.mark_processed("after", "", reply(), budget_seconds=BUDGET)
        assert result.outcome is Outcome.SETTLED
    finally:
        stream.cancel()

    processed = {
        (store, message_id)
        for store, stub in zip(("first", "second"), stubs, strict=True)
        for message_id in ("before", "after")
        if (await get(stub, message_id)).state == pb.MESSAGE_STATE_PROCESSED
    }
    assert processed == {("first", "before"), ("second", "after")}


@pytest.mark.postgres
@skip_without_postgres
async def test_settling_calls_fail_over_from_a_stopped_store_to_a_live_one_of_its_database(
    postgres_url, start_store, channels, caplog
):
    """MarkProcessed of a delivery the stopped store made, and ExtendLease and ReleaseMessage of a
    lease the live store holds, all sent first to the stopped store: each is done by the live
    one, since both keep their messages and leases in the one database."""
    caplog.set_level(logging.WARNING, logger="ackbot")
    first = await start_store(db_url=postgres_url)
    second = await start_store(db_url=postgres_url)
    stub = pb_grpc.MessageStoreStub(channels(second.address))
    await create(stub, "m-1", "delivered by the first store")
    await create(stub, "m-2", "held on the second store")
    client = client_of(channels, first.address, second.address)

    # m-1 (the oldest) goes to the first store's stream: the client now prefers that store.
    stream = client.stream(store=0, consumer="first", max_in_flight=1, lease_seconds=30.0)
    holder: DeliveryStream | None = None
    try:
        assert await stream.wait_open(), stream.end_reason
        [delivered] = await asyncio.wait_for(anext(stream), BUDGET)
        assert delivered.message.id == "m-1"
        # m-2 is leased on the second store, by another client: a lease that outlives the first.
        holder = StoreClient(channels(second.address)).stream(
            consumer="holder", max_in_flight=1, lease_seconds=30.0
        )
        assert await holder.wait_open(), holder.end_reason
        [held] = await asyncio.wait_for(anext(holder), BUDGET)
        assert held.message.id == "m-2"

        await first.server.stop()

        # The first store released m-1's lease as it stopped; MarkProcessed needs none.
        marked = await client.mark_processed(
            "m-1", delivered.lease_token, reply("answered anyway"), budget_seconds=BUDGET
        )
        assert marked.outcome is Outcome.SETTLED, marked
        extended = await client.extend(
            "m-2", held.lease_token, lease_seconds=600.0, budget_seconds=BUDGET
        )
        assert extended.outcome is Outcome.SETTLED, extended
        # A long retry_after keeps m-2 from going straight back to the holder's open stream.
        released = await client.release(
            "m-2", held.lease_token, reason="", retry_after_seconds=600.0, budget_seconds=BUDGET
        )
        assert released.outcome is Outcome.SETTLED, released
    finally:
        stream.cancel()
        if holder is not None:
            holder.cancel()

    answered = await get(stub, "m-1")
    assert answered.state == pb.MESSAGE_STATE_PROCESSED
    [stored] = await replies_to(stub, "m-1")
    assert (stored.id, stored.text) == (answered.reply_id, "answered anyway")
    handed_back = await get(stub, "m-2")
    assert (handed_back.state, handed_back.delivery_attempts) == (pb.MESSAGE_STATE_PENDING, 0)
    for what in ("MarkProcessed", "ExtendLease", "ReleaseMessage"):
        assert logged(
            caplog, f"{what} failed on {first.address} (UNAVAILABLE), trying {second.address}"
        )


# -- the worker's stream ------------------------------------------------------------------------


class Answers:
    async def reply(self, message: IncomingMessage) -> str | None:
        return f"answer to {message.id}"


def bot_config(stores: str) -> BotConfig:
    return BotConfig(
        store=stores, persona="ava", consumer="test-bot", max_in_flight=4, grace_seconds=5.0
    )


async def test_the_worker_moves_its_stream_to_the_next_store_and_round_robin_back(
    start_store, channels, tmp_path, caplog
):
    """Separate files (the stream's move needs no shared database): a message is answered only
    by a bot streaming from the store it was created on, which shows where the stream is."""
    caplog.set_level(logging.DEBUG, logger="ackbot")
    first_db = f"sqlite+aiosqlite:///{tmp_path}/first.db"
    first = await start_store(db_url=first_db)
    second = await start_store()
    connection: list[bool] = []

    async def on_connection(up: bool) -> None:
        connection.append(up)

    async def answered_on(store, message_id: str) -> None:
        stub = pb_grpc.MessageStoreStub(channels(store.address))
        await create(stub, message_id, "hello")
        await wait_state(stub, message_id, pb.MESSAGE_STATE_PROCESSED)

    worker = Worker(
        bot_config(f"{first.address},{second.address}"), Answers(), on_connection=on_connection
    )
    async with running(worker):
        await answered_on(first, "first-1")

        await first.server.stop()
        await wait_until(lambda: connection.count(True) == 2, what="a stream to the second store")
        await answered_on(second, "second-1")

        # The first store back on its address and file; then the second one stops.
        first = await start_store(db_url=first_db, listen=first.address)
        await second.server.stop()
        await wait_until(lambda: connection.count(True) == 3, what="a stream to the first again")
        await answered_on(first, "first-2")

    # Health follows the stream: down only between one store's stream and the next.
    assert connection == [True, False, True, False, True, False]
    lines = [r.getMessage() for r in caplog.records if r.name == "ackbot.client.consumer"]
    moves = [line for line in lines if line.startswith(("stream open to", "stream to"))]
    shutting_down = "(UNAVAILABLE: the store is shutting down; reconnect)"
    expected = [
        f"stream open to {first.address} as consumer test-bot",
        f"stream to {first.address} broke {shutting_down}; reconnecting to {second.address} in ",
        f"stream open to {second.address} as consumer test-bot",
        f"stream to {second.address} broke {shutting_down}; reconnecting to {first.address} in ",
        f"stream open to {first.address} as consumer test-bot",
    ]
    assert len(moves) == len(expected), moves
    for line, start in zip(moves, expected, strict=True):
        assert line.startswith(start), (line, start)


async def test_a_worker_whose_first_store_is_down_streams_from_the_next_named_by_hostname(
    store, stub, caplog
):
    caplog.set_level(logging.DEBUG, logger="ackbot")
    dead = f"127.0.0.1:{closed_port()}"
    live = f"localhost:{store.port}"
    async with running(Worker(bot_config(f"{dead},{live}"), Answers())):
        await create(stub, "m-1", "hello")
        await wait_state(stub, "m-1", pb.MESSAGE_STATE_PROCESSED)
    [answer] = await replies_to(stub, "m-1")
    assert answer.text == "answer to m-1"
    assert logged(caplog, f"store {dead} unavailable (UNAVAILABLE: ")
    assert logged(caplog, f"retry 1 on {live} in ")
    assert logged(caplog, f"stream open to {live} as consumer test-bot")
