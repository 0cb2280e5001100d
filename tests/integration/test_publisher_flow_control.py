"""The Publisher's flow control (issue 21 item 9) against a real store: a producer faster than
the store is held to `message_limit` unanswered messages (BLOCK), or told at once (ERROR), and
every message it published is stored once."""

from __future__ import annotations

import asyncio

import pytest

from ackbot.client import (
    BatchSettings,
    Client,
    FlowControl,
    FlowControlLimitError,
    LimitExceededBehavior,
    Publisher,
)
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import list_all

LIMIT = 20
MESSAGES = 300
WITHIN = 60.0


@pytest.fixture
async def client(store):
    async with Client.connect(store.address) as client:
        yield client


async def test_a_fast_producer_blocks_at_the_message_limit_and_everything_is_stored(client, stub):
    flow = FlowControl(message_limit=LIMIT, limit_exceeded_behavior=LimitExceededBehavior.BLOCK)
    most = 0
    async with Publisher(client, BatchSettings(max_messages=5), flow) as publisher:
        futures = []
        for n in range(MESSAGES):
            # No pause of its own: only publish_async's wait for room slows this loop.
            futures.append(await publisher.publish_async(f"fast {n}", author="ana"))
            most = max(most, publisher.outstanding_messages)
        stored = await asyncio.wait_for(asyncio.gather(*futures), WITHIN)
    assert most == LIMIT, "the producer was ahead of the store, and held at the limit"
    assert publisher.outstanding_messages == 0
    assert publisher.outstanding_bytes == 0
    assert len({response.message.id for response in stored}) == MESSAGES
    texts = {message.text for message in await list_all(stub)}
    assert texts == {f"fast {n}" for n in range(MESSAGES)}


async def test_past_the_limit_error_raises_and_queues_nothing(client, stub):
    flow = FlowControl(message_limit=LIMIT, limit_exceeded_behavior=LimitExceededBehavior.ERROR)
    async with Publisher(client, BatchSettings(max_messages=5), flow) as publisher:
        futures = [publisher.publish(f"first {n}", author="ana") for n in range(LIMIT)]
        with pytest.raises(FlowControlLimitError, match=f"message_limit is {LIMIT}"):
            publisher.publish("one too many", author="ana")
        with pytest.raises(FlowControlLimitError):
            await publisher.publish_async("one too many", author="ana")
        await asyncio.wait_for(asyncio.gather(*futures), WITHIN)
        # Answered: room again.
        await publisher.publish("after", author="ana")
    texts = [message.text for message in await list_all(stub)]
    assert "one too many" not in texts
    assert len(texts) == LIMIT + 1


async def test_the_byte_limit_bounds_too_and_a_message_that_never_fits_is_refused(client):
    text = "x" * 1000
    flow = FlowControl(byte_limit=3 * 1100)  # room for three such messages
    async with Publisher(client, BatchSettings(max_messages=100), flow) as publisher:
        futures = [publisher.publish(text, author="ana") for _ in range(3)]
        with pytest.raises(FlowControlLimitError, match="byte_limit is 3300"):
            publisher.publish(text, author="ana")
        with pytest.raises(FlowControlLimitError):
            await publisher.publish_async("y" * 4000, author="ana")  # larger than the limit
        blocked = asyncio.ensure_future(publisher.publish_async(text, author="ana"))
        done = await asyncio.wait_for(blocked, WITHIN)  # room once the three are answered
        await asyncio.wait_for(asyncio.gather(*futures, done), WITHIN)
    assert all(future.result().message.state == pb.MESSAGE_STATE_PENDING for future in futures)


async def test_ignore_keeps_the_old_unbounded_queue(client):
    flow = FlowControl(message_limit=1, limit_exceeded_behavior=LimitExceededBehavior.IGNORE)
    async with Publisher(client, flow_control=flow) as publisher:
        futures = [publisher.publish(f"m{n}", author="ana") for n in range(10)]
    assert all(future.done() for future in futures)
