"""A store stopped (SIGSTOP) inside an inserting transaction, holding the insert turn that every
store on the database takes before it inserts, stops the other stores' writes for seconds, not
for as long as it is stopped (docs/scaling.md, "A store that stalls"):

- the other store declares it dead and ends its database sessions (registry.py), which rolls
  its transaction back and releases the turn, even when the stalled store's own bound on idle
  transactions is long;
- the server ends the session by itself once it has sat idle in its transaction for the
  stalled store's --db-idle-in-transaction-seconds, even when no store declares it dead.

Store A is held inside its INSERT honestly: a trigger on `messages` sleeps (pg_sleep) for the
rows this test marks, after A has taken the insert turn; A is stopped while the server sleeps
for it, and the INSERT's answer then waits for a process that does not read it ("idle in
transaction"). Meanwhile two writers go through store B, one creating messages, one answering
(MarkProcessed with a reply, which inserts too) messages B's stream holds, and the test
measures how long B's writes stop (the figure is printed and recorded).

Real processes (ackbot.testing) on a database of the test's own; skipped, with the reason,
without ACKBOT_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, Service, store_service, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import ConsumeSession
from tests.support.postgres import asyncpg_dsn, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STORE_ID = re.compile(r"registered store=([0-9a-f]+)")
# The marked rows' INSERT sleeps this long in the trigger, holding the insert turn.
TRIGGER_SLEEP_SECONDS = 1.0
DEAD_AFTER_SECONDS = 3.0
# Beyond the dead-after time (or the idle bound): the trigger's sleep, a reaper's round (at
# most 1.5 heartbeats), one lock wait in flight, and room for a loaded CI box.
SLACK_SECONDS = 5.0
# Writes through B after the first that succeeds: all must succeed, each well within the
# lock timeout (B no longer waits for A at all).
WRITES_AFTER = 20
# Messages B's stream holds leases on, answered (MarkProcessed with a reply) during the stall.
TO_ANSWER = 8
# Each write through B may wait for the insert turn for --lock-timeout-seconds (5 s), then
# fails UNAVAILABLE; the RPC's own deadline is longer, so such a failure shows as that.
WRITE_DEADLINE_SECONDS = 15.0

# Sleeps inside the INSERT of the rows whose text this test marks; every other row passes.
STALL_TRIGGER = f"""
CREATE FUNCTION ackbot_test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.text LIKE 'stall-me%' THEN
        PERFORM pg_sleep({TRIGGER_SLEEP_SECONDS});
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ackbot_test_stall BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION ackbot_test_stall();
"""


@pytest.fixture
async def postgres_url():
    async with fresh_database("ackbot_stalled_store") as url:
        yield url


def store_id(store: Service) -> str:
    match = STORE_ID.search(store.log_text())
    assert match is not None, store.describe()
    return match.group(1)


async def execute(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if not args:  # a script of several statements cannot be prepared
            await connection.execute(query)
            return []
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


def _create(text: str, message_id: str) -> pb.CreateMessageRequest:
    return pb.CreateMessageRequest(message=pb.Message(id=message_id, author="t", text=text))


@pytest.mark.parametrize(
    ("args_a", "args_b", "freed_by"),
    [
        # A's own bound is far beyond the test: only B's declaring it dead can free the turn.
        (["--db-idle-in-transaction-seconds", "600"], [], "declared dead"),
        # B never judges A within the test: only the server's bound on A's session can.
        ([], ["--dead-after-seconds", "600"], "idle bound"),
    ],
)
async def test_a_store_stopped_inside_its_insert_stops_the_others_writes_for_seconds(
    postgres_url, run_service, tmp_path, record_property, args_a, args_b, freed_by
):
    # postgres_url comes first: its teardown (DROP DATABASE) runs after the services'.
    common = ["--db", postgres_url, "--dead-after-seconds", f"{DEAD_AFTER_SECONDS:g}"]
    store_a = store_service(tmp_path, name="store-a", args=common + args_a)
    if freed_by == "declared dead":
        # A wakes to find itself declared dead, and stops with status 1 (semantics.md).
        store_a.expect_exit(1)
    store_a = await run_service(store_a)
    store_b = await run_service(store_service(tmp_path, name="store-b", args=common + args_b))
    a_id = store_id(store_a)
    await execute(postgres_url, STALL_TRIGGER)

    async with (
        grpc.aio.insecure_channel(store_a.address) as channel_a,
        grpc.aio.insecure_channel(store_b.address) as channel_b,
    ):
        stub_a, stub_b = pb_grpc.MessageStoreStub(channel_a), pb_grpc.MessageStoreStub(channel_b)
        # Both stores write before the stall: the trigger passes unmarked rows. B's stream
        # holds leases on messages to answer during the stall.
        await stub_a.CreateMessage(_create("before", "before-a"), timeout=RPC_TIMEOUT)
        for n in range(TO_ANSWER):
            await stub_b.CreateMessage(_create("question", f"question-{n}"), timeout=RPC_TIMEOUT)
        stream = ConsumeSession(
            stub_b, consumer="on-b", max_in_flight=TO_ANSWER + 1, lease_seconds=600
        )
        try:
            taken = [await stream.next() for _ in range(TO_ANSWER + 1)]
            leased = [d for d in taken if d.message.id != "before-a"]
            leased = leased[:TO_ANSWER]

            stalled_create = asyncio.ensure_future(
                stub_a.CreateMessage(_create("stall-me", "stalled"), timeout=120)
            )

            async def a_sleeps_in_its_insert() -> bool:
                rows = await execute(
                    postgres_url,
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 "
                    "AND wait_event = 'PgSleep'",
                    f"ackbot-store:{a_id}",
                )
                return bool(rows)

            await wait_until(
                a_sleeps_in_its_insert, within=20, interval=0.02, what="A in its insert"
            )
            store_a.proc.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                creates = Writes(
                    lambda n: stub_b.CreateMessage(
                        _create("during", f"during-{n}"), timeout=WRITE_DEADLINE_SECONDS
                    )
                )
                # A failed mark rolled back: the same lease is still good for the next try.
                marks = Writes(
                    lambda _: stub_b.MarkProcessed(
                        _answer(leased[0]), timeout=WRITE_DEADLINE_SECONDS
                    )
                )
                await asyncio.gather(
                    creates.until_one_succeeds(stopped_at), marks.until_one_succeeds(stopped_at)
                )
                for n in range(WRITES_AFTER):
                    started = time.monotonic()
                    await stub_b.CreateMessage(_create("after", f"after-{n}"), timeout=RPC_TIMEOUT)
                    if n + 1 < len(leased):
                        await stub_b.MarkProcessed(_answer(leased[n + 1]), timeout=RPC_TIMEOUT)
                    assert time.monotonic() - started < 2.0, "B still waits for the stopped store"
                # Still stopped: it was not A waking that freed B.
                assert store_a.proc.poll() is None
                assert a_is_stopped(store_a)
            finally:
                store_a.proc.send_signal(signal.SIGCONT)
        finally:
            await stream.close()

        stopped_for = max(creates.stopped_for, marks.stopped_for)
        figure = (
            f"store A stopped inside its insert ({freed_by}): through store B, CreateMessage "
            f"stopped for {creates.stopped_for:.2f} s and MarkProcessed with a reply for "
            f"{marks.stopped_for:.2f} s ({len(creates.failures) + len(marks.failures)} calls "
            "failed UNAVAILABLE meanwhile)"
        )
        print(f"\n{figure}")
        record_property(
            f"stalled_store_writes_stopped_seconds_{freed_by.replace(' ', '_')}",
            round(stopped_for, 2),
        )
        assert stopped_for < DEAD_AFTER_SECONDS + SLACK_SECONDS, figure
        assert all(f.startswith("UNAVAILABLE") for f in creates.failures + marks.failures), figure

        # A's insert was rolled back with its session: its caller heard an error, and the row
        # is nowhere (nothing half-written), while B's are all there.
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(stalled_create, timeout=60)
        rows = await execute(postgres_url, "SELECT id FROM messages WHERE id <> $1", "")
        ids = {row["id"] for row in rows}
        assert "stalled" not in ids
        assert {f"after-{n}" for n in range(WRITES_AFTER)} <= ids
        answered = await execute(
            postgres_url, "SELECT reply_to FROM messages WHERE reply_to IS NOT NULL AND $1", True
        )
        assert {row["reply_to"] for row in answered} == {d.message.id for d in leased}

    log_b = store_b.log_text()
    if freed_by == "declared dead":
        assert re.search(rf"ended database session pid=\d+ of dead store={a_id}", log_b), (
            store_b.describe()
        )
        # Judged by its silence, as it was before its sessions were ended.
        assert re.search(rf"store={a_id} \(\S+\) is dead: no heartbeat for", log_b), (
            store_b.describe()
        )
        # Woken, A finds its registration gone and stops by itself.
        code = await asyncio.to_thread(store_a.proc.wait, 30)
        assert code == 1, store_a.describe()
        assert "was declared dead by another store" in store_a.log_text()
    else:
        assert "ended database session" not in log_b, store_b.describe()
        # The server ended A's idle transaction; A itself lives on and writes again.
        await stub_write_again(store_a)
    assert "Traceback" not in store_a.log_text() + log_b


def _answer(delivery: pb.Delivery) -> pb.MarkProcessedRequest:
    # With a reply: inserting it takes the insert turn, as a create does.
    return pb.MarkProcessedRequest(
        id=delivery.message.id,
        lease_token=delivery.lease_token,
        reply=pb.Message(author="on-b", text=f"answer to {delivery.message.id}"),
    )


class Writes:
    """One kind of write through store B, tried again and again from the stall on until one
    succeeds (`call(n)` for the n-th try); then `stopped_for` is how long writes stopped."""

    def __init__(self, call: Callable[[int], Awaitable[object]]) -> None:
        self._call = call
        self.failures: list[str] = []
        self.stopped_for = 0.0

    async def until_one_succeeds(self, stopped_at: float) -> None:
        while True:
            assert time.monotonic() - stopped_at < DEAD_AFTER_SECONDS + 3 * SLACK_SECONDS
            try:
                await self._call(len(self.failures))
            except grpc.aio.AioRpcError as exc:
                # The lock timeout: the write waited for the turn A holds.
                self.failures.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.05)  # pacing: a client's backoff
            else:
                self.stopped_for = time.monotonic() - stopped_at
                return


def a_is_stopped(store: Service) -> bool:
    """Whether the kernel says the process is stopped (state T), not merely slow."""
    stat = Path(f"/proc/{store.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


async def stub_write_again(store: Service) -> None:
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)

        async def writes() -> bool:
            try:
                await stub.CreateMessage(_create("woken", "woken-a"), timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False
            return True

        await wait_until(writes, within=20, what="store A writes again after SIGCONT")
