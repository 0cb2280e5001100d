"""Deleting and holding across two real stores on one PostgreSQL database (issue 19): an
approval through one store wakes a bot streaming from the other at once (by notification: the
stores poll only every 30 s), and a message deleted through the other store while its bot is
stopped is never answered, and the bot's slot on its own store comes back. Runs when
ACKBOT_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import grpc

from ackbot.testing import RPC_TIMEOUT, bot_service, responders
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.integration.test_delete_hold import (
    APPROVED_DELIVERY_SECONDS,
    WORK_SECONDS,
    approve_and_time,
    delete_while_the_bot_works,
)
from tests.support.harness import get, wait_state

from . import test_cross_store as cross

# The fixtures and marks (postgres, slow, skipped without a server) of the cross-store tests.
pytestmark = cross.pytestmark
admin = cross.admin
database = cross.database
two_stores = cross.two_stores


async def test_an_approval_through_one_store_wakes_a_bot_on_the_other(two_stores, tmp_path):
    a, b = two_stores
    bot = bot_service(tmp_path, a.address, persona="on-a")
    try:
        await bot.astart()
        async with (
            grpc.aio.insecure_channel(a.address) as channel_a,
            grpc.aio.insecure_channel(b.address) as channel_b,
        ):
            stub_a = pb_grpc.MessageStoreStub(channel_a)
            stub_b = pb_grpc.MessageStoreStub(channel_b)
            created = await stub_a.CreateMessage(
                pb.CreateMessageRequest(
                    message=pb.Message(id="held", author="tester", text="moderate me"), hold=True
                ),
                timeout=RPC_TIMEOUT,
            )
            assert created.message.state == pb.MESSAGE_STATE_HELD
            await stub_a.CreateMessage(
                pb.CreateMessageRequest(message=pb.Message(id="free", author="t", text="hi")),
                timeout=RPC_TIMEOUT,
            )
            await wait_state(stub_a, "free", pb.MESSAGE_STATE_PROCESSED, within=15)
            assert (await get(stub_a, "held")).state == pb.MESSAGE_STATE_HELD

            assert await approve_and_time(stub_b, stub_a, "held") < APPROVED_DELIVERY_SECONDS
            await wait_state(stub_a, "held", pb.MESSAGE_STATE_PROCESSED, within=15)
    finally:
        bot.cleanup()


async def test_a_message_deleted_through_another_store_is_never_answered(two_stores, tmp_path):
    a, b = two_stores
    bot = bot_service(
        tmp_path,
        a.address,
        persona="on-a",
        max_in_flight=1,
        responder=responders.spec("slow"),
        env={responders.DELAY_ENV: str(WORK_SECONDS)},
    )
    try:
        await bot.astart()
        async with (
            grpc.aio.insecure_channel(a.address) as channel_a,
            grpc.aio.insecure_channel(b.address) as channel_b,
        ):
            await delete_while_the_bot_works(
                bot, pb_grpc.MessageStoreStub(channel_b), pb_grpc.MessageStoreStub(channel_a)
            )
    finally:
        bot.cleanup()
