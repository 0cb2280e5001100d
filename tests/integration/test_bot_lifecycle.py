"""The bot's life cycle against a real store: it reconnects when the store comes back, and on
SIGTERM it finishes the replies it started and hands back the rest."""

from __future__ import annotations

import time

import pytest

from ackbot.testing import responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    check_answered_once,
    create,
    create_many,
    get,
    list_all,
    wait_state,
)

pytestmark = pytest.mark.slow


async def test_bot_reconnects_when_the_store_restarts(store, start_store, stub, start_bot):
    bot = await start_bot(persona="steady")
    await create(stub, "before the restart", id="before")
    await wait_state(stub, "before", pb.MESSAGE_STATE_PROCESSED, within=20)

    assert await store.aterminate() == 0

    async def bot_down():
        return not await bot.aserving()

    await wait_until(bot_down, within=10, what="bot health leaves SERVING without its stream")

    # The same database and address: the bot finds it again on its own, with backoff.
    await start_store.started(
        name="store-again",
        db_path=store.log_path.parent / "store.db",
        args=["--listen", store.address],
    )
    await wait_until(bot.aserving, within=20, what="bot SERVING again after the store restart")

    await create(stub, "after the restart", id="after")
    await wait_state(stub, "after", pb.MESSAGE_STATE_PROCESSED, within=20)
    check_answered_once(await list_all(stub), ["before", "after"], personas={"steady"})


IN_FLIGHT = 4
REPLY_SECONDS = 1.0  # shorter than the bot's 2 s grace period (see ackbot.testing.bot_service)


async def test_sigterm_finishes_running_replies_and_hands_back_the_rest(stub, start_bot):
    ids = await create_many(stub, 10, clients=2, prefix="drain")
    bot = await start_bot(
        persona="drainer",
        max_in_flight=IN_FLIGHT,
        lease_seconds=60,
        responder=responders.spec("slow"),
        env={"ACKBOT_TEST_RESPONDER_DELAY": str(REPLY_SECONDS)},
    )

    async def busy():
        leased = await list_all(stub, state=pb.MESSAGE_STATE_LEASED)
        return leased if len(leased) == IN_FLIGHT else None

    leased = await wait_until(busy, within=10, what=f"{IN_FLIGHT} replies running")
    running = [m.id for m in leased]

    started = time.monotonic()
    assert await bot.aterminate() == 0
    assert time.monotonic() - started < 2 + 3, "the bot exits within its grace period"

    messages = await list_all(stub)
    check_answered_once(messages, running, personas={"drainer"})
    assert await list_all(stub, state=pb.MESSAGE_STATE_LEASED) == []
    for message_id in set(ids) - set(running):
        message = await get(stub, message_id)
        assert message.state == pb.MESSAGE_STATE_PENDING, message
        # Never delivered, or handed back unstarted: either way no attempt is used up.
        assert message.delivery_attempts == 0, message
