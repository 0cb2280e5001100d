"""One store per SQLite file and one listener per port, with real processes: a second store (or
bot) refuses to start with one line and exit code 1, and the first goes on as if nothing had
happened. A store killed with SIGKILL leaves nothing that blocks the next one."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import pytest

from ackbot.testing import READY_TIMEOUT, RPC_TIMEOUT, Service, bot_service, store_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import StreamReader, create, get, list_all, seconds, wait_state

pytestmark = pytest.mark.slow


async def failed_start(service: Service) -> str:
    """Starts `service`, which must exit with code 1 having written one line; returns it."""
    service.expect_exit(1).start()
    assert service.proc is not None
    try:
        code = await asyncio.to_thread(service.proc.wait, READY_TIMEOUT)
    except subprocess.TimeoutExpired:
        service.cleanup()
        raise AssertionError(f"{service.name} started\n{service.describe()}") from None
    lines = service.log_text().splitlines()
    assert code == 1, service.describe()
    assert len(lines) == 1, service.describe()
    return lines[0]


def content_files(db_path) -> dict[str, tuple[int, int]]:
    """Size and modification time of the database and its WAL."""
    files = [db_path, db_path.with_name(db_path.name + "-wal")]
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()}


async def test_a_second_store_on_the_same_sqlite_file_refuses_and_leaves_the_first_alone(
    start_store, tmp_path
):
    db_path = tmp_path / "shared.db"
    first = await start_store.started(name="first", db_path=db_path)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        await create(stub, "held by a bot", id="held")
        bot = StreamReader(stub, consumer="bot", max_in_flight=1, lease_seconds=3600)
        try:
            [delivery] = await bot.take(1)
            leased = await get(stub, "held")
            files = content_files(db_path)

            line = await failed_start(store_service(tmp_path, db_path=db_path, name="second"))

            assert line.endswith(
                f" ERROR ackbot.store: store failed to start: {db_path} is in use by another "
                f"store (pid {first.proc.pid}, listening on {first.address}); one store per "
                "SQLite file: stop that one or give this one another --db"
            )
            assert content_files(db_path) == files
            # The first store's lease is untouched: still LEASED, and its token still the
            # lease (a second store that had started would have released it).
            assert await get(stub, "held") == leased
            assert leased.state == pb.MESSAGE_STATE_LEASED
            await stub.ExtendLease(
                pb.ExtendLeaseRequest(
                    id="held", lease_token=delivery.lease_token, lease_duration=seconds(60)
                ),
                timeout=RPC_TIMEOUT,
            )
        finally:
            await bot.close()
    assert await first.aserving()


async def test_a_store_starts_on_the_file_of_one_killed_with_sigkill(start_store, tmp_path):
    db_path = tmp_path / "kept.db"
    first = await start_store.started(name="first", db_path=db_path)
    async with grpc.aio.insecure_channel(first.address) as channel:
        await create(pb_grpc.MessageStoreStub(channel), "before the kill", id="kept")
    assert await first.akill() == -9

    second = await start_store.started(name="second", db_path=db_path)

    lock = db_path.with_name("kept.db.lock").read_text()
    assert lock == f"pid {second.proc.pid}, listening on {second.address}\n"
    async with grpc.aio.insecure_channel(second.address) as channel:
        assert [m.id for m in await list_all(pb_grpc.MessageStoreStub(channel))] == ["kept"]


async def test_a_second_store_on_the_same_port_refuses_and_the_first_keeps_serving(
    start_store, tmp_path
):
    first = await start_store.started(name="first")

    line = await failed_start(
        store_service(tmp_path, name="second", args=["--listen", first.address])
    )

    assert line.endswith(
        f" ERROR ackbot.store: store failed to start: cannot listen on {first.address}: the "
        "address is already in use"
    )
    assert await first.aserving()
    # New connections reach the first store, and its database, every time.
    for number in range(5):
        async with grpc.aio.insecure_channel(first.address) as channel:
            await create(pb_grpc.MessageStoreStub(channel), "after", id=f"after-{number}")
    async with grpc.aio.insecure_channel(first.address) as channel:
        stored = [m.id for m in await list_all(pb_grpc.MessageStoreStub(channel))]
    assert stored == [f"after-{number}" for number in range(5)]


async def test_a_second_bot_on_the_same_port_refuses_and_the_first_keeps_serving(
    store, start_bot, stub, tmp_path
):
    first = await start_bot(persona="first")

    line = await failed_start(
        bot_service(tmp_path, store.address, persona="second", args=["--listen", first.address])
    )

    assert line.endswith(
        f" ERROR ackbot.bot: bot failed to start: cannot listen on {first.address}: the "
        "address is already in use"
    )
    assert await first.aserving()
    await create(stub, "hello", id="still-answered")
    await wait_state(stub, "still-answered", pb.MESSAGE_STATE_PROCESSED, within=RPC_TIMEOUT)
