"""A responder that fails: the message ends DEAD after max_attempts with its last error, other
messages are still answered, and RequeueMessage brings it back for a healthy bot."""

from __future__ import annotations

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    check_answered_once,
    create,
    create_many,
    get,
    list_all,
    wait_settled,
    wait_state,
)

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 3


@pytest.fixture
def store(start_store):
    return start_store(args=["--max-attempts", str(MAX_ATTEMPTS)])


async def test_failing_message_goes_dead_others_are_answered_and_requeue_revives_it(
    stub, start_bot
):
    failing_bot = await start_bot(persona="picky", responder=responders.spec("fails_on_marker"))
    before = await create_many(stub, 5, clients=5, prefix="fine-a")
    await create(stub, "please FAIL-ME now", id="poison")
    after = await create_many(stub, 5, clients=5, prefix="fine-b")

    dead = await wait_state(stub, "poison", pb.MESSAGE_STATE_DEAD, within=30)
    assert dead.delivery_attempts == MAX_ATTEMPTS
    assert dead.last_error, "the reason of the last failure is kept"
    assert dead.reply_id == ""
    await wait_settled(stub, expected_processed=2 * 10, within=30)
    check_answered_once(await list_all(stub), before + after, personas={"picky"})
    assert await list_all(stub, reply_to="poison") == []
    assert await failing_bot.aserving(), "the bot keeps serving after failures"

    # Stop the failing bot first, so the requeued message is not delivered to it again.
    assert await failing_bot.aterminate() == 0
    requeued = await stub.RequeueMessage(pb.RequeueMessageRequest(id="poison"), timeout=RPC_TIMEOUT)
    assert requeued.message.state == pb.MESSAGE_STATE_PENDING
    assert requeued.message.delivery_attempts == 0
    assert (await get(stub, "poison")).state == pb.MESSAGE_STATE_PENDING

    await start_bot(persona="healer")
    healed = await wait_state(stub, "poison", pb.MESSAGE_STATE_PROCESSED, within=30)
    replies = await list_all(stub, reply_to="poison")
    assert [r.id for r in replies] == [healed.reply_id]
    assert replies[0].author == "healer"


async def test_always_failing_responder_dead_letters_every_message(stub, start_bot):
    bot = await start_bot(persona="grumpy", responder=responders.spec("always_fails"))
    ids = await create_many(stub, 3, clients=3, prefix="doomed")

    async def all_dead():
        dead = await list_all(stub, state=pb.MESSAGE_STATE_DEAD)
        return len(dead) == len(ids)

    await wait_until(all_dead, within=30, what="every message DEAD")
    for message_id in ids:
        message = await get(stub, message_id)
        assert message.delivery_attempts == MAX_ATTEMPTS
        assert message.last_error
    assert await list_all(stub, state=pb.MESSAGE_STATE_PROCESSED) == []
    assert await bot.aserving()

    # Requeue is only for DEAD messages.
    assert await bot.aterminate() == 0
    await create(stub, "fresh", id="not-dead")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RequeueMessage(pb.RequeueMessageRequest(id="not-dead"), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
