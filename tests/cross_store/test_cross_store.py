"""Two real stores on one PostgreSQL database: work created through one reaches a bot streaming
from the other at once, by notification, and still after the listener's session is killed.

Each store polls for other stores' work only every 30 s (`--wake-poll-seconds`), longer than
any test here waits, so a prompt delivery can only be the notification's (or the catch-up
wake's) doing. Runs when ACKBOT_TEST_POSTGRES_URL is set (CI sets it).
"""

from __future__ import annotations

import os
import secrets

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from ackbot.testing import bot_service, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.heavy import heavy
from tests.support.harness import (
    check_answered_once,
    create,
    create_many,
    list_all,
    wait_settled,
    wait_state,
)

POSTGRES_URL_ENV = "ACKBOT_TEST_POSTGRES_URL"
LISTENER_APPLICATION_NAME = "ackbot-store-listener"
LONG_POLL = ["--wake-poll-seconds", "30", "--listener-check-seconds", "1"]
# Generous: a delivery by notification takes milliseconds; one by the poll would take 30 s.
PROMPT_SECONDS = 5.0

pytestmark = [
    # A delivery within PROMPT_SECONDS is measured on the wall clock.
    heavy,
    pytest.mark.postgres,
    pytest.mark.slow,
]


@pytest.fixture
async def admin():
    """A connection to the database named by ACKBOT_TEST_POSTGRES_URL, for the test's own DDL."""
    base = make_url(os.environ[POSTGRES_URL_ENV])
    connection = await asyncpg.connect(
        base.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def database(admin):
    """The name of a database of its own on that server, dropped after the test."""
    name = f"ackbot_xs_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def two_stores(database, start_store):
    # `database` comes first so that its teardown (DROP DATABASE) runs after the stores'.
    url = (
        make_url(os.environ[POSTGRES_URL_ENV])
        .set(database=database)
        .render_as_string(hide_password=False)
    )
    a = await start_store.started(name="store-a", args=["--db", url, *LONG_POLL])
    b = await start_store.started(name="store-b", args=["--db", url, *LONG_POLL])
    return a, b


async def test_creates_through_one_store_reach_a_bot_on_the_other_at_once(two_stores, tmp_path):
    a, b = two_stores
    bot = bot_service(tmp_path, b.address, persona="bee")
    try:
        await bot.astart()
        async with grpc.aio.insecure_channel(a.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            ids = await create_many(stub, 60, clients=3, prefix="xs")
            await wait_settled(stub, expected_processed=120, within=20)
            messages = await list_all(stub)
        replies = check_answered_once(messages, ids, personas={"bee"})
    finally:
        bot.cleanup()
    originals = {m.id: m for m in messages}
    for original_id, reply in replies.items():
        # Created on A's clock, answered on B's: the same machine's wall clock.
        waited = (
            reply.process_time.ToNanoseconds() - originals[original_id].receive_time.ToNanoseconds()
        ) / 1e9
        assert waited < PROMPT_SECONDS, f"{original_id} was answered {waited:.1f} s after create"
    assert "delivered message_id=xs-" in b.log_text()
    assert "delivered message_id=" not in a.log_text()  # no bot streams from A


async def test_a_killed_listener_reconnects_and_catches_up(two_stores, admin, database, tmp_path):
    a, b = two_stores
    bot = bot_service(tmp_path, b.address, persona="bee")
    try:
        await bot.astart()
        async with grpc.aio.insecure_channel(a.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            before = await create(stub, "before", id="before")
            await wait_state(stub, before.id, pb.MESSAGE_STATE_PROCESSED, within=PROMPT_SECONDS)

            # Keep the listeners from coming back until the test says so (existing sessions,
            # the stores' pooled ones included, stay), then end both listeners' sessions.
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND datname = $2",
                    LISTENER_APPLICATION_NAME,
                    database,
                )
                assert killed == 2
                await wait_until(
                    lambda: "stopped hearing other stores" in b.log_text(),
                    PROMPT_SECONDS,
                    what="store B notices that its listener is gone",
                )
                # Deaf to other stores, B still serves: its poll would find their work.
                assert await b.aserving("ackbot.v1.MessageStore")
                # Its notification reaches nobody on B.
                meanwhile = await create(stub, "meanwhile", id="meanwhile")
            finally:
                await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

            # B reconnects (backoff: 5 s at most) and looks once for what it missed.
            await wait_state(stub, meanwhile.id, pb.MESSAGE_STATE_PROCESSED, within=15)
            after = await create(stub, "after", id="after")
            await wait_state(stub, after.id, pb.MESSAGE_STATE_PROCESSED, within=PROMPT_SECONDS)
            messages = await list_all(stub)
        check_answered_once(messages, ["before", "meanwhile", "after"], personas={"bee"})
    finally:
        bot.cleanup()
    log = b.log_text()
    assert "stopped hearing other stores (the database closed the connection)" in log
    assert "listening for other stores' work again" in log
    # The bot's one stream stayed open: the catch-up wake, not a new stream, found the message.
    assert log.count("stream opened consumer=bot-bee") == 1
