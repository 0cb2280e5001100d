"""The database cannot write: full (SQLite's max_page_count), a file the OS will not let grow
(RLIMIT_FSIZE, as a quota or a full filesystem), or locked by another process past the deadline.

Each case runs the same scenario: creates and marks sent together while the cause lasts are
refused with a retryable code (UNAVAILABLE or RESOURCE_EXHAUSTED, never INTERNAL or UNKNOWN);
nothing of them is half-written (no message without its content, no reply without its original
PROCESSED, no PROCESSED original without its reply); then the cause goes away, with no restart,
and the same calls, retried as a client would, go through.

tests/integration/test_storage_errors.py covers a locked CreateMessage; the lock case here adds
MarkProcessed, and creates and marks refused in one go.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, Service, store_service, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import create, get

from .invariants import cross_row_problems, processed_without_reply
from .page_limited_store import MAX_PAGES_ENV

pytestmark = pytest.mark.slow

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Large enough to need fresh overflow pages (and fresh WAL frames) on every write, within the
# 16 KiB text limit.
BIG_TEXT_BYTES = 12_000
QUESTIONS = 3
REFUSED_CREATES = 6
# Pages beyond the ballast: the store's schema and a handful of messages, then full.
HEADROOM_PAGES = 48
BALLAST_PAGES = 64
LOCK_TIMEOUT_SECONDS = 0.5


def big_text(tag: str) -> str:
    return (f"{tag} " * (BIG_TEXT_BYTES // (len(tag) + 1)))[:BIG_TEXT_BYTES]


async def create_call(stub, message_id: str) -> pb.CreateMessageResponse:
    message = pb.Message(id=message_id, author="tester", text=big_text(message_id))
    return await stub.CreateMessage(pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT)


async def mark_call(stub, message_id: str) -> pb.MarkProcessedResponse:
    reply = pb.Message(author="bot", text=big_text(f"reply-{message_id}"))
    return await stub.MarkProcessed(
        pb.MarkProcessedRequest(id=message_id, reply=reply), timeout=RPC_TIMEOUT
    )


async def accepted_after_retries(call: Callable[[], object], what: str):
    """The client's retry loop on retryable codes, under a deadline."""

    async def attempt():
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            return None

    return await wait_until(attempt, within=20, interval=0.2, what=what)


async def fill_until_refused(stub, limit: int = 400) -> grpc.aio.AioRpcError:
    """Creates big messages until the store refuses one; returns the refusal."""
    for number in range(limit):
        try:
            await create_call(stub, f"filler-{number}")
        except grpc.aio.AioRpcError as exc:
            return exc
    raise AssertionError(f"{limit} big creates and the database never filled up")


async def refused_whole_then_recovered(
    stub, db_path: Path, questions: list[str], remove_cause: Callable[[], None]
) -> set[str]:
    """The scenario of the module docstring; returns the codes of the refusals."""
    refused = [f"refused-{n}" for n in range(REFUSED_CREATES)]
    outcomes = await asyncio.gather(
        *(create_call(stub, message_id) for message_id in refused),
        *(mark_call(stub, message_id) for message_id in questions),
        return_exceptions=True,
    )
    codes: set[str] = set()
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError), f"accepted unwritable: {outcome}"
        assert outcome.code() in RETRYABLE, f"{outcome.code().name}: {outcome.details()}"
        assert "Traceback" not in (outcome.details() or "")
        codes.add(outcome.code().name)

    # Nothing of the refused calls is in the database.
    for message_id in refused:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(stub, message_id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for message_id in questions:
        question = await get(stub, message_id)
        assert question.state == pb.MESSAGE_STATE_PENDING, question
        assert question.reply_id == ""
    assert cross_row_problems(db_path) == []

    remove_cause()

    for message_id in refused:
        response = await accepted_after_retries(
            lambda message_id=message_id: create_call(stub, message_id), f"create {message_id}"
        )
        assert not response.already_existed
    for message_id in questions:
        response = await accepted_after_retries(
            lambda message_id=message_id: mark_call(stub, message_id), f"mark {message_id}"
        )
        assert not response.already_processed
        assert response.reply.text == big_text(f"reply-{message_id}")
        assert (await get(stub, message_id)).reply_id == response.reply.id
    assert cross_row_problems(db_path) == []
    assert processed_without_reply(db_path) == []
    return codes


async def ask_questions(stub) -> list[str]:
    return [(await create(stub, f"question {n}", id=f"question-{n}")).id for n in range(QUESTIONS)]


# -- full: max_page_count -------------------------------------------------------------------


def add_ballast(db_path: Path, pages: int) -> int:
    """Fills `pages` pages of the file with a table of our own; returns the file's page count."""
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE test_ballast (filler BLOB)")
        connection.executemany("INSERT INTO test_ballast VALUES (zeroblob(3500))", [()] * pages)
        return int(connection.execute("PRAGMA page_count").fetchone()[0])


def drop_ballast(db_path: Path) -> None:
    # The freed pages go to the file's free list (no auto_vacuum), where the store's
    # connections, still bound by max_page_count, can use them: space comes back.
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        connection.execute("PRAGMA busy_timeout=10000")
        connection.execute("DELETE FROM test_ballast")


@pytest.fixture
def start_page_limited_store(tmp_path) -> Iterator[Callable[..., object]]:
    services: list[Service] = []

    async def start(db_path: Path, max_pages: int) -> Service:
        service = store_service(
            tmp_path,
            db_path=db_path,
            name="page-limited-store",
            launcher=[sys.executable, "-m", "tests.reliability.page_limited_store"],
            env={MAX_PAGES_ENV: str(max_pages)},
        )
        services.append(service)
        return await service.astart()

    yield start
    for service in services:
        service.cleanup()


async def test_a_full_database_refuses_writes_whole_and_recovers_when_space_frees(
    start_page_limited_store, tmp_path
):
    db_path = tmp_path / "full.db"
    pages = add_ballast(db_path, BALLAST_PAGES)
    store = await start_page_limited_store(db_path, max_pages=pages + HEADROOM_PAGES)
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        questions = await ask_questions(stub)
        refusal = await fill_until_refused(stub)
        assert refusal.code() in RETRYABLE, f"{refusal.code().name}: {refusal.details()}"

        codes = await refused_whole_then_recovered(
            stub, db_path, questions, lambda: drop_ballast(db_path)
        )
        print(f"full database: refused with {sorted(codes | {refusal.code().name})}")
        assert await store.aserving()
        assert store.proc.poll() is None, "recovered by itself, not by a restart"


# -- the OS refuses to grow the files: RLIMIT_FSIZE ----------------------------------------


async def test_files_that_cannot_grow_refuse_writes_whole_and_recover_when_allowed(
    start_store, tmp_path
):
    db_path = tmp_path / "capped.db"
    store = await start_store.started(db_path=db_path)
    wal_path = db_path.with_name(db_path.name + "-wal")
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        questions = await ask_questions(stub)
        # Grow the write-ahead log well past the log file: the cap set below lets the store's
        # log lines through and stops the next WAL append. (The WAL restarts from its start
        # only after a checkpoint at 1,000 pages, far from here.)
        for number in range(30):
            await create_call(stub, f"grower-{number}")
        cap = wal_path.stat().st_size
        assert store.log_path.stat().st_size < cap - 256 * 1024, "the log would hit the cap"

        pid = store.proc.pid
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        # Python ignores SIGXFSZ, so a write past the cap fails with EFBIG instead of killing.
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (cap, hard))
        try:
            # Normally the very next write; more only if a checkpoint restarted the WAL.
            refusal = await fill_until_refused(stub)
            assert refusal.code() in RETRYABLE, f"{refusal.code().name}: {refusal.details()}"
            codes = await refused_whole_then_recovered(
                stub,
                db_path,
                questions,
                lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard)),
            )
        finally:
            if store.proc.poll() is None:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        print(f"capped files: refused with {sorted(codes | {refusal.code().name})}")
        assert await store.aserving()


# -- locked past the deadline -------------------------------------------------------------


async def test_a_locked_database_refuses_marks_and_creates_whole_then_recovers(
    start_store, tmp_path
):
    db_path = tmp_path / "locked.db"
    store = await start_store.started(
        db_path=db_path, args=["--lock-timeout-seconds", str(LOCK_TIMEOUT_SECONDS)]
    )
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        questions = await ask_questions(stub)
        intruder = sqlite3.connect(db_path, isolation_level=None)
        try:
            intruder.execute("BEGIN IMMEDIATE")
            codes = await refused_whole_then_recovered(
                stub, db_path, questions, lambda: intruder.execute("ROLLBACK")
            )
        finally:
            intruder.close()
        assert codes == {"UNAVAILABLE"}
        assert await store.aserving()
