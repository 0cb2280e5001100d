"""The library Consumer's flow control against a real store: pause() stops new work (the
Consume session is drained, deliveries held but not started are handed back with their attempt
given back), resume() takes work again on a new session; and a callback's HandBack gives the
message back without spending an attempt."""

from __future__ import annotations

import asyncio

from ackbot.client import Client, Consumer, ConsumerSettings, Delivery, HandBack
from ackbot.testing import wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.metrics_scrape import METRICS, scrape, value

WITHIN = 20.0


async def _create(stub, text: str) -> str:
    response = await stub.CreateMessage(
        pb.CreateMessageRequest(message=pb.Message(author="tester", text=text)), timeout=WITHIN
    )
    return response.message.id


async def _get(stub, message_id: str) -> pb.Message:
    return (await stub.GetMessage(pb.GetMessageRequest(id=message_id), timeout=WITHIN)).message


async def test_pause_hands_back_unstarted_deliveries_and_resume_takes_work_again(store, stub):
    ids = [await _create(stub, text) for text in ("a", "b", "c")]
    gate = asyncio.Event()
    seen_by_a: list[str] = []
    attempts_at_b: dict[str, int] = {}
    consumer_a: Consumer

    async def answer_a(delivery: Delivery) -> str | None:
        seen_by_a.append(delivery.message.text)
        if len(seen_by_a) == 1:
            consumer_a.pause("testing")
            await gate.wait()
        return f"A: {delivery.message.text}"

    async def answer_b(delivery: Delivery) -> str | None:
        attempts_at_b[delivery.message.id] = delivery.attempt
        return f"B: {delivery.message.text}"

    async with Client.connect(store.address) as client:
        consumer_a = Consumer(client, answer_a, ConsumerSettings(consumer="a", max_in_flight=3))
        run_a = asyncio.create_task(consumer_a.run())
        try:
            await wait_until(lambda: consumer_a.paused == "testing", WITHIN, what="A paused")
            first = seen_by_a[0]
            others = [i for i, text in zip(ids, "abc", strict=True) if text != first]
            # Handed back unstarted, the attempt given back: pending, never counted.
            # (Whatever else reached A while paused was handed back too.)

            async def handed_back() -> bool:
                messages = [await _get(stub, i) for i in others]
                return all(
                    (m.state, m.delivery_attempts) == (pb.MESSAGE_STATE_PENDING, 0)
                    for m in messages
                )

            await wait_until(handed_back, WITHIN, what="the unstarted deliveries handed back")
            # A second consumer gets them as first attempts; the paused one gets nothing new.
            consumer_b = Consumer(client, answer_b, ConsumerSettings(consumer="b"))
            async with consumer_b:

                async def answered_by_b() -> bool:
                    messages = [await _get(stub, i) for i in others]
                    return all(m.state == pb.MESSAGE_STATE_PROCESSED for m in messages)

                await wait_until(answered_by_b, WITHIN, what="B answering the other two")
            assert attempts_at_b == dict.fromkeys(others, 1)
            assert seen_by_a == [first]
            # The running callback was not disturbed by the pause: it settles.
            gate.set()
            first_id = ids["abc".index(first)]

            async def first_done() -> bool:
                return (await _get(stub, first_id)).state == pb.MESSAGE_STATE_PROCESSED

            await wait_until(first_done, WITHIN, what="A's running reply stored")
            consumer_a.resume()
            assert consumer_a.paused is None
            later = await _create(stub, "d")

            async def later_done() -> bool:
                return (await _get(stub, later)).state == pb.MESSAGE_STATE_PROCESSED

            await wait_until(later_done, WITHIN, what="A answering again after resume")
            assert seen_by_a == [first, "d"]
            reply = await _get(stub, (await _get(stub, later)).reply_id)
            assert reply.text == "A: d"
        finally:
            await asyncio.wait_for(consumer_a.stop(), WITHIN)
            await asyncio.wait_for(run_a, WITHIN)


async def test_a_hand_back_from_the_callback_spends_no_attempt(store, stub):
    message_id = await _create(stub, "later, please")
    calls: list[int] = []

    async def busy(delivery: Delivery) -> str | None:
        calls.append(delivery.attempt)
        raise HandBack("the dependency is down", delay_seconds=3600.0)

    settings = ConsumerSettings(retry_base_seconds=3600.0)
    async with Client.connect(store.address) as client, Consumer(client, busy, settings):
        await wait_until(lambda: calls, WITHIN, what="the callback called")

        async def handed_back() -> bool:
            message = await _get(stub, message_id)
            return message.state == pb.MESSAGE_STATE_PENDING and not message.HasField(
                "lease_expire_time"
            )

        await wait_until(handed_back, WITHIN, what="the message handed back")
    message = await _get(stub, message_id)
    assert (message.delivery_attempts, message.last_error) == (0, "")
    assert calls == [1]


async def test_paused_on_a_stream_that_cannot_drain_deliveries_wait_leased_until_resume(
    store, stub
):
    # consume=False: StreamUnprocessed, as with a store older than Consume, which cannot be told
    # to send nothing more: what arrives while paused is kept, leased, and started on resume.
    first_id = await _create(stub, "first")
    gate = asyncio.Event()
    seen: list[str] = []
    consumer: Consumer

    async def answer(delivery: Delivery) -> str | None:
        seen.append(delivery.message.text)
        if delivery.message.text == "first":
            consumer.pause("testing")
            await gate.wait()
        return f"re: {delivery.message.text}"

    settings = ConsumerSettings(max_in_flight=2, lease_seconds=2.0, consume=False)
    async with Client.connect(store.address) as client:
        consumer = Consumer(client, answer, settings)
        running = asyncio.create_task(consumer.run())
        try:
            await wait_until(lambda: consumer.paused == "testing", WITHIN, what="paused")
            parked_id = await _create(stub, "parked")

            async def leased() -> pb.Message | None:
                message = await _get(stub, parked_id)
                return message if message.state == pb.MESSAGE_STATE_LEASED else None

            first_lease = await wait_until(leased, WITHIN, what="the parked delivery leased")
            expiry = first_lease.lease_expire_time.ToNanoseconds()

            async def extended() -> bool:
                message = await _get(stub, parked_id)
                return message.lease_expire_time.ToNanoseconds() > expiry

            # Not started, yet its lease is kept (2 s leases, extended every second).
            await wait_until(extended, WITHIN, what="the parked lease extended")
            assert seen == ["first"]
            consumer.resume()
            gate.set()

            async def both_done() -> bool:
                messages = [await _get(stub, i) for i in (first_id, parked_id)]
                return all(m.state == pb.MESSAGE_STATE_PROCESSED for m in messages)

            await wait_until(both_done, WITHIN, what="both answered after resume")
            assert sorted(seen) == ["first", "parked"]
            assert (await _get(stub, parked_id)).delivery_attempts == 1
        finally:
            await asyncio.wait_for(consumer.stop(), WITHIN)
            await asyncio.wait_for(running, WITHIN)


async def test_paused_before_run_the_session_opens_drained_and_resume_takes_work(start_store):
    # How the bot starts while its model is not checked yet: connected, yet nothing leased to
    # it (the drain goes with the session's opening request, before the store claims anything).
    store = await start_store.started(args=METRICS)
    seen: list[str] = []

    async def answer(delivery: Delivery) -> str | None:
        seen.append(delivery.message.id)
        return f"answer: {delivery.message.text}"

    async def delivered() -> float:
        return value(await scrape(store), "ackbot_deliveries_total")

    async with Client.connect(store.address) as client:
        stub = pb_grpc.MessageStoreStub(client.channel)
        ids = [await _create(stub, text) for text in ("x", "y")]
        consumer = Consumer(client, answer, ConsumerSettings(consumer="late", max_in_flight=4))
        consumer.pause("not ready")
        run = asyncio.create_task(consumer.run())
        try:
            await wait_until(lambda: consumer.connected, WITHIN, what="the stream is up")
            # Another message after the session opened: the store must not send it either.
            ids.append(await _create(stub, "z"))
            await wait_until(
                lambda: "stream draining consumer=late" in store.log_text(), WITHIN, what="drain"
            )
            assert await delivered() == 0
            for message_id in ids:
                message = await _get(stub, message_id)
                assert message.state == pb.MESSAGE_STATE_PENDING, message
                assert message.delivery_attempts == 0, message
            assert seen == []
            consumer.resume()

            async def all_done() -> bool:
                messages = [await _get(stub, i) for i in ids]
                return all(m.state == pb.MESSAGE_STATE_PROCESSED for m in messages)

            await wait_until(all_done, WITHIN, what="answered after resume")
            assert sorted(seen) == sorted(ids)
            assert await delivered() == len(ids)
            for message_id in ids:
                assert (await _get(stub, message_id)).delivery_attempts == 1
        finally:
            await consumer.stop()
            await run


async def test_paused_before_run_no_stream_that_cannot_drain_is_opened_until_resume(store, stub):
    # consume=False (a store older than Consume): such a stream would deliver at once, so a
    # consumer paused before it connects opens none until it resumes.
    message_id = await _create(stub, "waiting")
    seen: list[str] = []

    async def answer(delivery: Delivery) -> str | None:
        seen.append(delivery.message.id)
        return "answered"

    async with Client.connect(store.address) as client:
        settings = ConsumerSettings(consumer="old", max_in_flight=2, consume=False)
        consumer = Consumer(client, answer, settings)
        consumer.pause("not ready")
        run = asyncio.create_task(consumer.run())
        try:
            # A message created now would go to an open stream at once (a notification).
            second_id = await _create(stub, "also waiting")
            for _ in range(20):  # a few turns of the loop and round trips: still nothing
                assert not consumer.connected
                message = await _get(stub, message_id)
                assert message.delivery_attempts == 0, message
            assert (await _get(stub, second_id)).delivery_attempts == 0
            consumer.resume()
            await wait_until(lambda: consumer.connected, WITHIN, what="the stream is up")

            async def both_done() -> bool:
                messages = [await _get(stub, i) for i in (message_id, second_id)]
                return all(m.state == pb.MESSAGE_STATE_PROCESSED for m in messages)

            await wait_until(both_done, WITHIN, what="answered after resume")
            assert sorted(seen) == sorted([message_id, second_id])
        finally:
            await consumer.stop()
            await run
