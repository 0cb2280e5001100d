"""WatchMessages and `ackbot watch` against a real store: pushed arrivals and changes of state,
a message shown turning DEAD, a bad request, and the watch's end at shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest
from grpc_status import rpc_status

from ackbot.testing import RPC_TIMEOUT, child_env, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import StreamReader, create

WATCH_TIMEOUT = 20.0


async def read_to_the_end(call) -> None:
    while True:
        await call.read()


def events_in(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_ackbot_watch_shows_a_message_turning_dead(start_store, tmp_path):
    # One attempt, one-second leases: a delivery that is never answered goes DEAD when the
    # next stream's claim finds its lease lapsed.
    store = await start_store.started(args=["--max-attempts", "1"])
    output = tmp_path / "watch.out"
    with output.open("w") as sink:
        watcher = subprocess.Popen(  # noqa: ASYNC220 (started once; never waited on here)
            [sys.executable, "-m", "ackbot.cli", "--store", store.address, "--json", "watch"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    try:
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            # The watch gives no sign that it is registered: post markers until one shows.
            markers = iter(range(1, 1000))

            async def shows_a_marker() -> bool:
                if "marker-" in output.read_text():
                    return True
                await create(stub, "marker", id=f"marker-{next(markers)}")
                return False

            await wait_until(shows_a_marker, WATCH_TIMEOUT, 0.3, what="watch printing")
            silent = StreamReader(stub, consumer="silent", max_in_flight=100, lease_seconds=1)
            try:
                await silent.wait_open()
                await create(stub, "never answered", id="doomed")
                while (await silent.next()).message.id != "doomed":
                    pass
                # Once the lease has lapsed, another stream's claim finds it out of attempts.
                other = StreamReader(stub, consumer="other", max_in_flight=1)
                try:

                    def doomed_states() -> list[tuple[str, str]]:
                        return [
                            (event["event"], event["message"]["state"])
                            for event in events_in(output)
                            if event["message"]["id"] == "doomed"
                        ]

                    await wait_until(
                        lambda: ("changed", "MESSAGE_STATE_DEAD") in doomed_states(),
                        WATCH_TIMEOUT,
                        what="the watch showing doomed DEAD",
                    )
                finally:
                    await other.close()
            finally:
                await silent.close()
        states = doomed_states()
        # Created, possibly already LEASED: a waiting stream's claim rides in the create's
        # transaction (claim on create), and then the delivery shows no change of its own.
        assert states[0] in {
            ("created", "MESSAGE_STATE_PENDING"),
            ("created", "MESSAGE_STATE_LEASED"),
        }
        assert states[-1] == ("changed", "MESSAGE_STATE_DEAD")
        # Between them, its delivery; a watcher that reads it only once the lease has lapsed
        # shows it PENDING, as every read does.
        assert set(states[1:-1]) <= {
            ("changed", "MESSAGE_STATE_LEASED"),
            ("changed", "MESSAGE_STATE_PENDING"),
        }, states
        [dead] = [e["message"] for e in events_in(output) if e["message"]["id"] == "doomed"][-1:]
        assert dead["delivery_attempts"] == 1
    finally:
        watcher.terminate()
        watcher.wait(10)


async def test_a_negative_after_sequence_is_refused_naming_the_field(store):
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        call = stub.WatchMessages(pb.WatchMessagesRequest(after_sequence=-1), timeout=RPC_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_sequence" in caught.value.details()


async def test_a_watch_ends_at_shutdown_without_holding_the_stop(start_store):
    # A long grace period: a stop that waited for the open watch would take all of it.
    store = await start_store.started(args=["--grace-seconds", "30"])
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        await create(stub, "one", id="one")
        call = stub.WatchMessages(pb.WatchMessagesRequest(after_sequence=0))
        first = await call.read()
        assert (first.type, first.message.id) == (pb.WATCH_EVENT_TYPE_CREATED, "one")
        started = time.monotonic()
        assert await store.aterminate() == 0
        stopped_in = time.monotonic() - started
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_to_the_end(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert "SHUTTING_DOWN" in str(status.details)
    assert stopped_in < 20, f"the stop waited {stopped_in:.1f} s for the watch"
