"""The same promise on the scale-out engine: a store on a real PostgreSQL server, two bots, every
message answered exactly once. Runs when ACKBOT_TEST_POSTGRES_URL is set (CI sets it)."""

from __future__ import annotations

import grpc
import pytest

from ackbot.testing import bot_service
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import check_answered_once, create_many, list_all, wait_settled
from tests.support.postgres import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
async def postgres_url():
    """A database of its own on the server named by ACKBOT_TEST_POSTGRES_URL, dropped after."""
    async with fresh_database() as url:
        yield url


async def test_two_bots_on_a_postgresql_store_answer_every_message_once(
    postgres_url, start_store, tmp_path
):
    # postgres_url comes first so that its teardown (DROP DATABASE) runs after the store's.
    store = await start_store.started(name="pg-store", args=["--db", postgres_url])
    bots = [bot_service(tmp_path, store.address, persona=p) for p in ("pg-one", "pg-two")]
    try:
        for bot in bots:
            await bot.astart()
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            ids = await create_many(stub, 300, clients=6, prefix="pg")
            await wait_settled(stub, expected_processed=600, within=90)
            check_answered_once(await list_all(stub), ids, personas={"pg-one", "pg-two"})
    finally:
        for bot in bots:
            bot.cleanup()
