"""One bot, two stores of one PostgreSQL database (`--store A,B`), and `kill -9` of the store the
bot streams from while the bot holds replies to its deliveries: the bot's stream moves to the
survivor, the held replies are stored through the survivor (and their leases kept alive there
meanwhile), messages created afterwards are answered, and every message is answered exactly once,
none DEAD. Runs when ACKBOT_TEST_POSTGRES_URL is set.

Stores do not wake each other's streams yet, so every batch ends with creates through the store
the bot streams from: those wake its stream, which claims what the other store took in as well.
"""

from __future__ import annotations

import re

import grpc
import pytest

from ackbot.testing import Service, bot_service, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.gated_responder import GATE_ENV, GATED
from tests.support.harness import check_answered_once, create_many, get, list_all, wait_settled
from tests.support.postgres import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BATCH = 12
IN_FLIGHT = 4
# Short, so that a delivery the killed store made and no bot ever received comes back soon (the
# survivor claims it at one of its own leases' expiry wakes, which come later); long enough that
# the held replies' leases are extended every 5 s without a miss on a busy machine.
LEASE_SECONDS = 10
PERSONA = "failover"
STREAM_OPEN = re.compile(r"stream open to (\S+) as consumer")


@pytest.fixture
async def postgres_url():
    """A database of its own on the server named by ACKBOT_TEST_POSTGRES_URL, dropped after."""
    async with fresh_database() as url:
        yield url


def stream_store(bot: Service) -> str | None:
    """The address of the store the bot's latest stream opened to, from its log."""
    found = STREAM_OPEN.findall(bot.log_text())
    return found[-1] if found else None


async def test_a_bot_with_two_stores_carries_on_when_its_store_is_killed(
    postgres_url, start_store, tmp_path
):
    # postgres_url comes first so that its teardown (DROP DATABASE) runs after the stores'.
    # One after the other: each creates the schema on start.
    first = await start_store.started(name="store-a", args=["--db", postgres_url])
    second = await start_store.started(name="store-b", args=["--db", postgres_url])
    gate = tmp_path / "gate"
    bot = bot_service(
        tmp_path,
        [first.address, second.address],
        persona=PERSONA,
        max_in_flight=IN_FLIGHT,
        lease_seconds=LEASE_SECONDS,
        responder=GATED,
        env={GATE_ENV: str(gate)},
    )
    try:
        await bot.astart()
        # The first store of the list, and the one the store's own log names.
        assert stream_store(bot) == first.address, bot.describe()
        assert f"stream opened consumer=bot-{PERSONA}" in first.log_text()

        async with (
            grpc.aio.insecure_channel(first.address) as first_channel,
            grpc.aio.insecure_channel(second.address) as second_channel,
        ):
            doomed = pb_grpc.MessageStoreStub(first_channel)
            survivor = pb_grpc.MessageStoreStub(second_channel)
            ids = await create_many(survivor, BATCH, clients=3, prefix="via-b")
            ids += await create_many(doomed, BATCH, clients=3, prefix="via-a")

            # The bot's only stream is to the first store: what is leased, it delivered.
            async def bot_holds_replies() -> list[pb.Message] | None:
                leased = await list_all(survivor, state=pb.MESSAGE_STATE_LEASED)
                return leased if len(leased) == IN_FLIGHT else None

            held = await wait_until(bot_holds_replies, within=60, what="the bot to hold replies")
            assert await first.akill() == -9

            await wait_until(
                lambda: stream_store(bot) == second.address,
                within=30,
                what="the bot's stream to move to the surviving store",
            )
            assert f"stream opened consumer=bot-{PERSONA}" in second.log_text()
            await wait_until(bot.aserving, within=30, what="the bot's health SERVING again")

            ids += await create_many(survivor, BATCH, clients=3, prefix="after")
            gate.touch()
            await wait_settled(survivor, expected_processed=2 * len(ids), within=120)
            messages = await list_all(survivor)
            check_answered_once(messages, ids, personas={PERSONA})
            assert not [m.id for m in messages if m.state == pb.MESSAGE_STATE_DEAD]
            # The replies held through the kill answered the dead store's deliveries: no
            # message of theirs was delivered again, and the survivor stored each.
            for message in held:
                answered = await get(survivor, message.id)
                assert answered.delivery_attempts == 1, answered
                assert f"processed message_id={message.id} " in second.log_text()

        assert bot.proc is not None
        assert bot.proc.poll() is None, "the bot carried on through its store's death"
        log = bot.log_text()
        assert f"stream to {first.address} broke" in log
        assert f"reconnecting to {second.address}" in log
    finally:
        bot.cleanup()
