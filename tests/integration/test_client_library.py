"""ackbot.client against real stores: the Client's calls, the Publisher's batching (counted in
RPCs by a client interceptor, never by timing), its futures and typed errors, its flush on
close, its retries across a store restart and its fallback to CreateMessage on a store without
BatchCreateMessages, TLS with tokens, and the Consumer settling deliveries."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from ackbot.client import (
    AlreadyExists,
    BatchSettings,
    Client,
    Consumer,
    ConsumerSettings,
    Delivery,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Publisher,
    ResourceExhausted,
)
from ackbot.client.channels import CHANNEL_OPTIONS
from ackbot.testing import Security, store_service, wait_until
from ackbot.v1 import message_store_pb2 as pb

from .harness import create, get, unique_id
from .test_security import TOKENS, pki  # noqa: F401 (a fixture)

BATCH = "/ackbot.v1.MessageStore/BatchCreateMessages"
CREATE = "/ackbot.v1.MessageStore/CreateMessage"
LIST = "/ackbot.v1.MessageStore/ListMessages"
# Never reached in these tests: a batch is sent by count, size or close, not by its timer.
NEVER = 3600.0
WITHIN = 20.0


class Recorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the calls a client makes: (method, items in the request)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        items = len(request.requests) if isinstance(request, pb.BatchCreateMessagesRequest) else 1
        self.calls.append((method, items))
        return await continuation(client_call_details, request)

    def batches(self) -> list[int]:
        return [items for method, items in self.calls if method == BATCH]


@pytest.fixture
async def recorded(store):
    recorder = Recorder()
    channel = grpc.aio.insecure_channel(store.address, interceptors=[recorder])
    async with Client(channel, address=store.address) as client:
        yield client, recorder


async def test_create_get_list_and_follow(recorded, stub):
    client, _ = recorded
    created = await client.create("hello", author="ana")
    assert created.message.id  # chosen by the client, so the create could be retried
    assert not created.already_existed
    again = await client.create("hello", author="ana", id=created.message.id)
    assert again.already_existed
    assert (await client.get(created.message.id)).text == "hello"
    with pytest.raises(NotFound) as caught:
        await client.get("missing")
    assert caught.value.reason == "MESSAGE_NOT_FOUND"
    assert caught.value.message_id == "missing"

    for n in range(4):
        await client.create(f"page {n}", author="ana")
    pages = [page async for page in client.list(page_size=2)]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [m.text for m in pages[0]] == ["hello", "page 0"]
    newest = [page async for page in client.list(limit=1, newest_first=True)]
    assert [m.text for page in newest for m in page] == ["page 3"]

    seen: list[str] = []

    async def follow() -> None:
        async for message in client.follow():
            seen.append(message.text)

    follower = asyncio.create_task(follow())
    try:
        # It starts at the current end, and gives no sign once its watch is open: post
        # markers until it shows one; what comes after that is new to it.
        markers = iter(range(1000))

        async def shows_a_marker() -> bool:
            if any(text.startswith("marker") for text in seen):
                return True
            await create(stub, f"marker {next(markers)}")
            return False

        await wait_until(shows_a_marker, WITHIN, 0.2, what="the follower showing a marker")
        assert not any(text.startswith(("hello", "page")) for text in seen)
        for n in range(3):
            await create(stub, f"new {n}")
        await wait_until(
            lambda: seen[-1:] == ["new 2"], WITHIN, what="the follower saw the 3 messages"
        )
        assert [text for text in seen if not text.startswith("marker")] == [
            "new 0",
            "new 1",
            "new 2",
        ]
    finally:
        follower.cancel()


async def test_the_publisher_sends_a_batch_when_it_is_full(recorded):
    client, recorder = recorded
    publisher = Publisher(client, BatchSettings(max_messages=10, max_latency=NEVER))
    futures = [publisher.publish(f"m{n}", author="ana") for n in range(25)]
    await asyncio.gather(*futures[:20])
    assert recorder.batches() == [10, 10]
    assert not futures[20].done()  # five wait for company (or close)
    await publisher.close()
    assert recorder.batches() == [10, 10, 5]
    stored = [f.result().message for f in futures]
    assert [m.text for m in stored] == [f"m{n}" for n in range(25)]
    assert len({m.id for m in stored}) == 25


async def test_the_publisher_sends_a_batch_before_it_passes_max_bytes(recorded):
    client, recorder = recorded
    text = "x" * 1000
    # Room for three such items, not four.
    settings = BatchSettings(max_messages=100, max_bytes=3 * 1100, max_latency=NEVER)
    async with Publisher(client, settings) as publisher:
        futures = [publisher.publish(text, author="ana") for _ in range(7)]
    assert recorder.batches() == [3, 3, 1]
    assert all(f.result().message.text == text for f in futures)


async def test_the_publisher_sends_a_lone_message_after_max_latency(recorded):
    client, recorder = recorded
    publisher = Publisher(client, BatchSettings(max_messages=100, max_latency=0.05))
    futures = [publisher.publish(f"t{n}", author="ana") for n in range(3)]
    # Not closed, not full: only the latency timer sends it.
    done = await asyncio.wait_for(asyncio.gather(*futures), WITHIN)
    assert recorder.batches() == [3]
    assert [r.message.text for r in done] == ["t0", "t1", "t2"]
    await publisher.close()
    assert recorder.batches() == [3]


async def test_each_future_carries_its_own_outcome(recorded, stub):
    client, recorder = recorded
    same, taken = unique_id("same"), unique_id("taken")
    await create(stub, "before", id=same, author="ana")
    await create(stub, "before", id=taken, author="ana")
    async with Publisher(client, BatchSettings(max_latency=NEVER)) as publisher:
        ok = publisher.publish("fine", author="ana")
        invalid = publisher.publish("bad author", author="")
        retried = publisher.publish("before", author="ana", id=same)
        clash = publisher.publish("other text", author="ana", id=taken)
    assert recorder.batches() == [4]
    assert not ok.result().already_existed
    assert retried.result().already_existed
    with pytest.raises(InvalidArgument) as bad:
        invalid.result()
    assert bad.value.violations[0][0] == "requests[1].message.author"
    with pytest.raises(AlreadyExists) as exists:
        clash.result()
    assert (exists.value.reason, exists.value.message_id) == ("ID_TAKEN", taken)
    assert (await get(stub, taken)).text == "before"


async def test_a_closed_publisher_refuses_more(recorded):
    client, recorder = recorded
    publisher = Publisher(client)
    await publisher.close()
    await publisher.close()  # twice is harmless
    with pytest.raises(RuntimeError):
        publisher.publish("late", author="ana")
    assert recorder.batches() == []


async def test_the_publisher_retries_until_the_store_is_back(start_store, tmp_path):
    db_path = tmp_path / "restart.db"
    first = await start_store.started(name="first", db_path=db_path)
    address = first.address
    recorder = Recorder()
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=[recorder])
    async with Client(channel, address=address) as client:
        publisher = Publisher(client, BatchSettings(max_messages=10, max_latency=NEVER))
        before = [publisher.publish(f"before {n}", author="ana") for n in range(10)]
        await asyncio.gather(*before)
        await first.aterminate()
        during = [publisher.publish(f"during {n}", author="ana") for n in range(10)]
        # The batch is out, failing and backing off, while the store is down.
        await wait_until(lambda: len(recorder.batches()) >= 3, WITHIN, what="a retried batch")
        assert not any(f.done() for f in during)
        await start_store.started(name="second", db_path=db_path, args=["--listen", address])
        stored = await asyncio.wait_for(asyncio.gather(*during), WITHIN)
        await publisher.close()
        assert [r.message.text for r in stored] == [f"during {n}" for n in range(10)]
        everything = [m async for page in client.list() for m in page]
        assert len(everything) == 20
        assert len({m.id for m in everything}) == 20


OLD_STORE = """
import sys
import grpc
from ackbot.store import servicer

async def unimplemented(self, request, context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

# A store from before BatchCreateMessages: the method answers UNIMPLEMENTED, as gRPC does for
# a method a server never registered.
servicer.MessageStoreServicer.BatchCreateMessages = unimplemented
from ackbot.store.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


async def test_an_older_store_gets_the_messages_one_by_one(tmp_path):
    old = store_service(tmp_path, name="old", launcher=[sys.executable, "-c", OLD_STORE])
    try:
        await old.astart()
        recorder = Recorder()
        channel = grpc.aio.insecure_channel(old.address, interceptors=[recorder])
        async with Client(channel, address=old.address) as client:
            async with Publisher(client, BatchSettings(max_latency=NEVER)) as publisher:
                first = [publisher.publish(f"a{n}", author="ana") for n in range(3)]
                await publisher.flush()
                bad = publisher.publish("", author="ana")
                second = [publisher.publish(f"b{n}", author="ana") for n in range(2)]
            assert [r.result().message.text for r in first + second] == [
                "a0",
                "a1",
                "a2",
                "b0",
                "b1",
            ]
            with pytest.raises(InvalidArgument) as caught:
                bad.result()
            assert caught.value.violations[0][0] == "message.text"  # CreateMessage's own name
            # One refused batch, then CreateMessage only, never the batch again.
            assert recorder.batches() == [3]
            assert [m for m, _ in recorder.calls].count(CREATE) == 6
    finally:
        old.cleanup()


async def test_tls_and_a_token(pki, tmp_path):  # noqa: F811 (the fixture)
    security = Security(ca=pki.ca, cert=pki.server_cert, key=pki.server_key, tokens=TOKENS)
    store = store_service(tmp_path, name="tls", security=security)
    try:
        await store.astart()
        ca = str(pki.ca)
        async with Client.connect(store.address, ca=ca, token=TOKENS["producer"]) as producer:
            async with Publisher(producer) as publisher:
                future = publisher.publish("over tls", author="ana")
            assert (await producer.get(future.result().message.id)).text == "over tls"
        async with Client.connect(store.address, ca=ca, token=TOKENS["bot"]) as bot:
            async with Publisher(bot) as publisher:
                refused = publisher.publish("bots may not create", author="bot")
            with pytest.raises(PermissionDenied):
                refused.result()
        with pytest.raises(ValueError, match="only over TLS"):
            Client.connect("192.0.2.1:50051", token=TOKENS["producer"])
    finally:
        store.cleanup()


async def test_the_consumer_answers_fails_and_stops(recorded, stub):
    client, _ = recorded
    ids = [(await create(stub, text)).id for text in ("one", "two", "boom")]

    async def handler(delivery: Delivery) -> str | None:
        if delivery.message.text == "boom":
            raise RuntimeError("cannot answer boom")
        if delivery.message.text == "two":
            return None
        return f"re: {delivery.message.text}"

    consumer = Consumer(client, handler, ConsumerSettings(author="helper", retry_base_seconds=60.0))
    running = asyncio.create_task(consumer.run())
    try:

        async def settled() -> bool:
            messages = [await get(stub, message_id) for message_id in ids]
            return (
                messages[0].state == pb.MESSAGE_STATE_PROCESSED
                and messages[1].state == pb.MESSAGE_STATE_PROCESSED
                and messages[2].last_error != ""
            )

        await wait_until(settled, WITHIN, what="the consumer settled all three")
    finally:
        await consumer.stop()
        await asyncio.wait_for(running, WITHIN)
    one, two, boom = [await get(stub, message_id) for message_id in ids]
    reply = await get(stub, one.reply_id)
    assert (reply.author, reply.text) == ("helper", "re: one")
    assert two.reply_id == ""
    assert boom.state == pb.MESSAGE_STATE_PENDING
    assert boom.last_error == "RuntimeError: cannot answer boom"


async def test_a_batch_too_large_for_the_store_is_sent_in_halves(start_store):
    store = await start_store.started(args=["--max-request-bytes", "4096"])
    recorder = Recorder()
    channel = grpc.aio.insecure_channel(store.address, interceptors=[recorder])
    async with Client(channel, address=store.address) as client:
        # max_bytes says 60 KiB; the store takes 4 KiB: ten 1000-byte texts do not fit.
        async with Publisher(client, BatchSettings(max_latency=NEVER)) as publisher:
            fits = [publisher.publish("x" * 1000, author="ana") for _ in range(10)]
            alone = publisher.publish("y" * 5000, author="ana")  # too large even alone
        assert all(not f.result().already_existed for f in fits)
        with pytest.raises(ResourceExhausted):
            alone.result()
        sent = recorder.batches()
        # The whole batch, then ever smaller halves, down to the big one alone.
        assert sent[0] == 11
        assert max(sent[1:]) <= 6
        assert 1 in sent
        stored = [m async for page in client.list() for m in page]
        assert len(stored) == 10


async def test_the_consumer_keeps_the_lease_and_stops_after_its_grace_period(recorded, stub):
    client, _ = recorded
    slow_id = (await create(stub, "slow")).id
    stuck_id = (await create(stub, "stuck")).id
    release_slow = asyncio.Event()

    async def handler(delivery: Delivery) -> str | None:
        if delivery.message.text == "slow":
            await release_slow.wait()
            return "done at last"
        await asyncio.Event().wait()  # never finishes
        return None

    settings = ConsumerSettings(lease_seconds=2.0, grace_seconds=0.5, max_in_flight=2)
    consumer = Consumer(client, handler, settings)
    running = asyncio.create_task(consumer.run())
    try:
        leased = await wait_until(
            lambda: _leased(stub, slow_id), WITHIN, what="the slow message leased"
        )
        first_expiry = leased.lease_expire_time.ToNanoseconds()

        async def extended() -> bool:
            message = await get(stub, slow_id)
            return message.lease_expire_time.ToNanoseconds() > first_expiry

        await wait_until(extended, WITHIN, what="the lease extended while the handler ran")
        release_slow.set()
        await wait_until(
            lambda: _state_is(stub, slow_id, pb.MESSAGE_STATE_PROCESSED), WITHIN, what="slow done"
        )
    finally:
        await consumer.stop()
        await asyncio.wait_for(running, WITHIN)
    stuck = await get(stub, stuck_id)
    # Cancelled after the grace period and handed back by the stream's close: pending again,
    # its attempt counted (the handler had started), no error recorded.
    assert stuck.state == pb.MESSAGE_STATE_PENDING
    assert stuck.delivery_attempts == 1
    assert stuck.last_error == ""
    assert (await get(stub, (await get(stub, slow_id)).reply_id)).text == "done at last"


async def _leased(stub, message_id: str) -> pb.Message | None:
    message = await get(stub, message_id)
    return message if message.state == pb.MESSAGE_STATE_LEASED else None


async def _state_is(stub, message_id: str, state: int) -> bool:
    return (await get(stub, message_id)).state == state


async def test_a_reply_finished_after_stop_is_stored_without_wasting_a_delivery(recorded, stub):
    client, _ = recorded
    first_id = (await create(stub, "first")).id
    second_id = (await create(stub, "second")).id
    started, finish = asyncio.Event(), asyncio.Event()

    async def handler(delivery: Delivery) -> str | None:
        started.set()
        await finish.wait()
        return f"re: {delivery.message.text}"

    consumer = Consumer(client, handler, ConsumerSettings(max_in_flight=1, grace_seconds=WITHIN))
    running = asyncio.create_task(consumer.run())
    await asyncio.wait_for(started.wait(), WITHIN)
    stopping = consumer.stop()
    finish.set()  # within the grace period
    await asyncio.wait_for(stopping, WITHIN)
    await asyncio.wait_for(running, WITHIN)
    assert (await get(stub, first_id)).state == pb.MESSAGE_STATE_PROCESSED
    # The mark waited for the stream's close, so its freed slot was never filled.
    second = await get(stub, second_id)
    assert (second.state, second.delivery_attempts) == (pb.MESSAGE_STATE_PENDING, 0)
