"""Retention and PurgeMessages with real stores: the sweeper removes settled messages (with their
replies) while creates go on, never an unsettled one, on SQLite and on PostgreSQL with two
stores sharing the sweep; a store killed mid-sweep leaves nothing half-removed; PurgeMessages
and `ackbot purge` by hand."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time

import grpc
import pytest

from ackbot.testing import wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from bench.fill import fill
from tests.heavy import heavy
from tests.support.harness import bad_request_fields, create, list_all, seconds
from tests.support.metrics_scrape import METRICS, scrape, value
from tests.support.postgres import fresh_database

RETAIN = ["--retain-processed", "1s", "--retain-dead", "1s", "--sweep-seconds", "0.2"]
PRODUCE_SECONDS = 3.0
REMOVED = "ackbot_messages_removed_total"


async def _produce(stubs: list[pb_grpc.MessageStoreStub], prefix: str) -> tuple[list[str], int]:
    """Creates through each store in turn for PRODUCE_SECONDS, answering every other message
    (MarkProcessed with a reply) and leaving the rest PENDING; returns the PENDING ids and
    how many were answered. Every call must succeed."""
    pending: list[str] = []
    answered = 0
    deadline = time.monotonic() + PRODUCE_SECONDS
    n = 0
    while time.monotonic() < deadline:
        stub = stubs[n % len(stubs)]
        message_id = f"{prefix}-{n}"
        await create(stub, f"text {n}", id=message_id)
        if n % 2:
            pending.append(message_id)
        else:
            await stub.MarkProcessed(
                pb.MarkProcessedRequest(id=message_id, reply=pb.Message(author="bot", text="ok"))
            )
            answered += 1
        n += 1
    return pending, answered


async def _sweeps_while_creating(stores, stubs) -> None:
    pending, answered = await _produce(stubs, "m")

    async def processed_left() -> bool:
        return not await list_all(stubs[0], state=pb.MESSAGE_STATE_PROCESSED)

    await wait_until(processed_left, within=20, what="the sweeper removed every PROCESSED")
    left = {m.id for m in await list_all(stubs[0])}
    assert left == set(pending)  # nothing unsettled removed, every reply gone with its original
    removed = [value(await scrape(s), REMOVED, state="PROCESSED", why="retention") for s in stores]
    assert sum(removed) == 2 * answered  # originals and replies, each once
    print(f"\nremoved by each store: {removed} of {2 * answered}")


async def test_the_sweeper_removes_settled_messages_while_creates_go_on_sqlite(start_store):
    store = await start_store.started(args=[*RETAIN, *METRICS])
    async with grpc.aio.insecure_channel(store.address) as channel:
        await _sweeps_while_creating([store], [pb_grpc.MessageStoreStub(channel)])


@pytest.mark.postgres
async def test_two_postgres_stores_share_the_sweep(start_store):
    async with fresh_database("ackbot_sweep") as url:
        stores = [
            await start_store.started(name=name, args=["--db", url, *RETAIN, *METRICS])
            for name in ("store-a", "store-b")
        ]
        async with (
            grpc.aio.insecure_channel(stores[0].address) as a,
            grpc.aio.insecure_channel(stores[1].address) as b,
        ):
            await _sweeps_while_creating(stores, [pb_grpc.MessageStoreStub(c) for c in (a, b)])
        for store in stores:
            store.cleanup()


def _half_removed(db_path) -> tuple[int, int, int]:
    """(answered originals without their reply, replies without their original, rows)."""
    connection = sqlite3.connect(db_path)
    try:
        lonely = connection.execute(
            "SELECT count(*) FROM messages o WHERE o.reply_to IS NULL AND o.state = 'PROCESSED' "
            "AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.reply_to = o.id)"
        ).fetchone()[0]
        orphans = connection.execute(
            "SELECT count(*) FROM messages r WHERE r.reply_to IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.id = r.reply_to)"
        ).fetchone()[0]
        rows = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        return lonely, orphans, rows
    finally:
        connection.close()


@heavy
async def test_a_store_killed_mid_sweep_leaves_nothing_half_removed(start_store, tmp_path):
    db_path = tmp_path / "sweep.db"
    # The schema first (an empty store, stopped), then 40,000 answered pairs straight in.
    await (await start_store.started(db_path=db_path, name="schema")).aterminate()
    total = 80_000
    fill(db_path, total, pending=0, sample=0)
    store = await start_store.started(
        db_path=db_path, args=["--retain-processed", "0s", "--sweep-seconds", "0.2"]
    )
    await wait_until(
        lambda: "(retention)" in store.log_text(), within=20, what="the first batch removed"
    )
    await store.akill()

    lonely, orphans, rows = _half_removed(db_path)
    assert (lonely, orphans) == (0, 0)
    assert 0 < rows < total, "the kill came after the sweep ended: nothing was cut short"
    # A store started again goes on, and finishes.
    await start_store.started(
        db_path=db_path, name="again", args=["--retain-processed", "0s", "--sweep-seconds", "0.2"]
    )
    await wait_until(lambda: _half_removed(db_path)[2] == 0, within=60, what="the rest removed")


async def test_purge_messages_removes_by_state_and_age_and_reports_progress(start_store):
    store = await start_store.started()
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        await create(stub, "answered", id="a")
        await stub.MarkProcessed(
            pb.MarkProcessedRequest(id="a", reply=pb.Message(author="bot", text="ok"))
        )
        await create(stub, "waiting", id="w")

        kept = [
            r
            async for r in stub.PurgeMessages(
                pb.PurgeMessagesRequest(state=pb.MESSAGE_STATE_PROCESSED, older_than=seconds(3600))
            )
        ]
        assert [(r.removed_count, r.done) for r in kept] == [(0, False), (0, True)]
        purged = [
            r
            async for r in stub.PurgeMessages(
                pb.PurgeMessagesRequest(state=pb.MESSAGE_STATE_PROCESSED, older_than=seconds(0))
            )
        ]
        assert (purged[-1].removed_count, purged[-1].done) == (2, True)
        assert [m.id for m in await list_all(stub)] == ["w"]


async def test_purge_messages_refuses_unsettled_states_and_a_missing_age(start_store):
    store = await start_store.started()
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        bad = pb.PurgeMessagesRequest(state=pb.MESSAGE_STATE_PENDING)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.PurgeMessages(bad):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(bad_request_fields(caught.value)) == ["older_than", "state"]
        negative = pb.PurgeMessagesRequest(state=pb.MESSAGE_STATE_DEAD, older_than=seconds(-1))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.PurgeMessages(negative):
                pass
        assert bad_request_fields(caught.value) == ["older_than"]


async def test_ackbot_purge_prints_what_it_removed(start_store):
    store = await start_store.started()
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        await create(stub, "answered", id="a")
        await stub.MarkProcessed(pb.MarkProcessedRequest(id="a"))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "ackbot.cli",
            "--store",
            store.address,
            "purge",
            "--state",
            "processed",
            "--older-than",
            "0s",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (0, "removed 1 messages\n"), done.stderr
