"""Each alert of docs/operations.md ("Alerts worth having"), evaluated over real scrapes of a
real store and bot: it fires when its condition holds and not otherwise (tests/integration/
promql.py evaluates the documented expressions themselves, read from the doc)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from ackbot.common.flags import package_version
from ackbot.testing import responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import create, wait_state
from tests.support.metrics_scrape import METRICS, scrape, value

from .promql import Scrape, documented_alerts, fires

pytestmark = pytest.mark.slow

ALERTS = documented_alerts()
SAMPLED_WITHIN = 20.0
LOCK_TIMEOUT_SECONDS = 0.5


async def scraped(service) -> Scrape:
    return Scrape(await scrape(service), time.monotonic())


def test_the_doc_lists_the_alerts_tested_here():
    assert set(ALERTS) == {
        "AckbotMessagesGoingDead",
        "AckbotBacklogOld",
        "AckbotNoBotConnected",
        "AckbotBotFailing",
        "AckbotStoreErrors",
    }


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "alerts.db"


@pytest.fixture
def store(start_store, db_path):
    return start_store(
        db_path=db_path,
        args=[*METRICS, "--max-attempts", "2", "--lock-timeout-seconds", str(LOCK_TIMEOUT_SECONDS)],
    )


async def test_no_bot_connected_fires_until_a_bot_streams_and_again_when_it_leaves(
    store, start_bot
):
    expr = ALERTS["AckbotNoBotConnected"]
    first = await scraped(store)
    assert fires(expr, first), "no bot has connected yet"
    assert value(first.samples, "ackbot_build_info", version=package_version()) == 1

    bot = await start_bot(persona="watcher")

    async def quiet() -> bool:
        return not fires(expr, await scraped(store))

    await wait_until(quiet, within=SAMPLED_WITHIN)
    assert await bot.aterminate() == 0

    async def firing() -> bool:
        return fires(expr, await scraped(store))

    await wait_until(firing, within=SAMPLED_WITHIN)


async def test_going_dead_and_bot_failing_fire_on_failures_only(store, start_bot, stub):
    dead_expr, failing_expr = ALERTS["AckbotMessagesGoingDead"], ALERTS["AckbotBotFailing"]
    bot = await start_bot(
        persona="picky", responder=responders.spec("fails_on_marker"), args=METRICS
    )
    store_before, bot_before = await scraped(store), await scraped(bot)
    await create(stub, "a fine question", id="fine")
    await wait_state(stub, "fine", pb.MESSAGE_STATE_PROCESSED, within=SAMPLED_WITHIN)
    assert not fires(dead_expr, await scraped(store), store_before)
    assert not fires(failing_expr, await scraped(bot), bot_before)

    store_before, bot_before = await scraped(store), await scraped(bot)
    await create(stub, "please FAIL-ME", id="poison")
    await wait_state(stub, "poison", pb.MESSAGE_STATE_DEAD, within=SAMPLED_WITHIN)
    assert fires(dead_expr, await scraped(store), store_before)
    # Two failures within a few seconds: well over the documented 0.1 per second.
    assert fires(failing_expr, await scraped(bot), bot_before)


async def test_backlog_old_fires_on_an_old_pending_message_only(store, stub, db_path):
    expr = ALERTS["AckbotBacklogOld"]
    await create(stub, "nobody answers this", id="waiting")

    async def sampled_pending() -> Scrape | None:
        current = await scraped(store)
        return current if value(current.samples, "ackbot_messages", state="PENDING") else None

    assert not fires(expr, await wait_until(sampled_pending, within=SAMPLED_WITHIN))
    # The message arrived ten minutes ago, as far as the database knows.
    with sqlite3.connect(db_path) as database:
        database.execute(
            "UPDATE messages SET receive_time_ns = receive_time_ns - ? WHERE id = 'waiting'",
            (600 * 10**9,),
        )

    async def firing() -> bool:
        return fires(expr, await scraped(store))

    await wait_until(firing, within=SAMPLED_WITHIN)


async def test_store_errors_fire_on_unavailable_calls_only(store, stub, db_path):
    expr = ALERTS["AckbotStoreErrors"]
    before = await scraped(store)
    await create(stub, "all is well", id="well")
    assert not fires(expr, await scraped(store), before)

    intruder = sqlite3.connect(db_path, isolation_level=None)
    try:
        intruder.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
        with pytest.raises(Exception, match="locked"):
            await create(stub, "during the lock", id="locked-1")
        # The first UNAVAILABLE only creates its series, which rate() cannot see increase (in
        # Prometheus too): the alert sees the failures after it.
        before = await scraped(store)
        with pytest.raises(Exception, match="locked"):
            await create(stub, "during the lock", id="locked-2")
    finally:
        intruder.execute("ROLLBACK")
        intruder.close()

    # The client has its error before the store's interceptor counts the call (the count comes
    # after the status went out): wait for the count rather than read it once.
    async def firing() -> bool:
        return fires(expr, await scraped(store), before)

    await wait_until(firing, within=SAMPLED_WITHIN)
