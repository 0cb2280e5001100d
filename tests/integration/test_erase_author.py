"""EraseAuthor with real stores: 10,000 messages of one author erased while 200 creates a second
go on (every create succeeds; their p99 during the erasure is measured and printed beside the
p99 before it), on SQLite and PostgreSQL; a store killed mid-erasure leaves no message deleted
without its reply or a reply without its message, and erasing again finishes the job; `ackbot
erase` shows the count."""

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
from bench.paced import Paced, p99, paced_creates
from tests.heavy import heavy
from tests.support.harness import bad_request_fields, create, list_all
from tests.support.postgres import fresh_database

AUTHOR = "erased"
MESSAGES = 10_000
ANSWERED = 100  # of them, with a reply each: the replies go too
RATE = 200.0  # creates a second, by others, during the erasure
BASELINE_CREATES = 400  # two seconds of them before the erasure starts


async def _fill_author(stub: pb_grpc.MessageStoreStub) -> None:
    for batch in range(MESSAGES // 1000):
        request = pb.BatchCreateMessagesRequest(
            requests=[
                pb.CreateMessageRequest(
                    message=pb.Message(id=f"e-{batch}-{i}", author=AUTHOR, text=f"mine {i}")
                )
                for i in range(1000)
            ]
        )
        response = await stub.BatchCreateMessages(request, timeout=60)
        assert all(r.WhichOneof("result") == "response" for r in response.results)
    for i in range(ANSWERED):
        await stub.MarkProcessed(
            pb.MarkProcessedRequest(id=f"e-0-{i}", reply=pb.Message(author="bot", text="ok"))
        )


async def _erase_while_creating(stub: pb_grpc.MessageStoreStub, label: str) -> None:
    await _fill_author(stub)
    stop = asyncio.Event()
    paced = Paced()
    producer = asyncio.create_task(paced_creates(stub, RATE, stop, paced, prefix="c"))
    try:
        await wait_until(
            lambda: len(paced.started) >= BASELINE_CREATES, within=30, what="baseline creates"
        )
        began = time.monotonic()
        progress = [r async for r in stub.EraseAuthor(pb.EraseAuthorRequest(author=AUTHOR))]
        ended = time.monotonic()
    finally:
        stop.set()
        await producer
    assert paced.errors == []  # every create succeeded
    assert progress[-1].done
    assert progress[-1].deleted_count == MESSAGES + ANSWERED
    assert len(progress) > 10  # in batches, each reported
    deleted = await list_all(stub, state=pb.MESSAGE_STATE_DELETED)
    assert len(deleted) == MESSAGES + ANSWERED
    assert {m.author for m in deleted} == {""}
    left = await list_all(stub)
    assert len(left) == len(paced.started)
    assert {m.author for m in left} == {"paced"}
    before, during = paced.between(0, began), paced.between(began, ended)
    assert during, "no create ran during the erasure"
    print(
        f"\nEraseAuthor {label}: {MESSAGES + ANSWERED} deleted in {ended - began:.2f} s; "
        f"create p99 {p99(during):.1f} ms during it ({len(during)} creates at {RATE:g}/s), "
        f"{p99(before):.1f} ms before it ({len(before)} creates)"
    )


@heavy
async def test_erasing_an_author_while_creates_go_on_sqlite(start_store):
    store = await start_store.started()
    async with grpc.aio.insecure_channel(store.address) as channel:
        await _erase_while_creating(pb_grpc.MessageStoreStub(channel), "SQLite")


@heavy
@pytest.mark.postgres
async def test_erasing_an_author_while_creates_go_on_postgres(start_store):
    async with fresh_database("ackbot_erase") as url:
        store = await start_store.started(args=["--db", url])
        async with grpc.aio.insecure_channel(store.address) as channel:
            await _erase_while_creating(pb_grpc.MessageStoreStub(channel), "PostgreSQL")
        store.cleanup()


def _half_deleted(db_path) -> tuple[int, int]:
    """(answered pairs of which one is a tombstone and the other not, messages of the author)."""
    connection = sqlite3.connect(db_path)
    try:
        split = connection.execute(
            "SELECT count(*) FROM messages o JOIN messages r ON r.reply_to = o.id "
            "WHERE (o.state = 'DELETED') != (r.state = 'DELETED')"
        ).fetchone()[0]
        left = connection.execute(
            "SELECT count(*) FROM messages WHERE author = 'filler'"
        ).fetchone()[0]
        return split, left
    finally:
        connection.close()


@heavy
async def test_a_store_killed_mid_erasure_leaves_nothing_half_deleted(start_store, tmp_path):
    db_path = tmp_path / "erase.db"
    await (await start_store.started(db_path=db_path, name="schema")).aterminate()
    pairs = 20_000
    fill(db_path, 2 * pairs, pending=0, sample=0)  # "filler"'s messages, each with a reply
    store = await start_store.started(db_path=db_path)
    async with grpc.aio.insecure_channel(store.address) as channel:
        call = pb_grpc.MessageStoreStub(channel).EraseAuthor(pb.EraseAuthorRequest(author="filler"))
        first = await anext(aiter(call))
        assert not first.done
        await store.akill()
        call.cancel()

    split, left = _half_deleted(db_path)
    assert split == 0
    assert 0 < left < pairs, "the kill came after the erasure ended: nothing was cut short"
    again = await start_store.started(db_path=db_path, name="again")
    async with grpc.aio.insecure_channel(again.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        rest = [r async for r in stub.EraseAuthor(pb.EraseAuthorRequest(author="filler"))]
    assert rest[-1].done
    assert rest[-1].deleted_count == 2 * left  # the rest, each with its reply
    assert _half_deleted(db_path) == (0, 0)


async def test_erase_author_refuses_a_missing_author_and_ackbot_erase_prints_the_count(
    start_store,
):
    store = await start_store.started()
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.EraseAuthor(pb.EraseAuthorRequest()):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(caught.value) == ["author"]
        await stub.BatchCreateMessages(
            pb.BatchCreateMessagesRequest(
                requests=[
                    pb.CreateMessageRequest(message=pb.Message(id=f"x{i}", author="zed", text="t"))
                    for i in range(250)  # three batches on SQLite
                ]
            )
        )
        await create(stub, "other", id="y", author="amy")
    command = [sys.executable, "-m", "ackbot.cli", "--store", store.address, "erase"]
    done = await asyncio.to_thread(
        subprocess.run, [*command, "--author", "zed"], capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, "deleted 250 messages\n"), done.stderr
    assert done.stderr.splitlines() == ["deleted 200 so far", "deleted 250 so far"]
    async with grpc.aio.insecure_channel(store.address) as channel:
        assert [m.id for m in await list_all(pb_grpc.MessageStoreStub(channel))] == ["y"]
