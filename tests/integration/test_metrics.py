"""Prometheus metrics, scraped over HTTP from a real store and a real bot started with
--metrics-listen 127.0.0.1:0, and checked against what the test did."""

from __future__ import annotations

import socket
import subprocess
import sys

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, Service, child_env, responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import ConsumeSession, StreamReader, create, seconds
from tests.support.metrics_scrape import METRICS, METRICS_ON, Samples, scrape, value

SERVICE = "ackbot.v1.MessageStore"
# The store samples its state gauges every 5 s; a little more for a slow machine.
SAMPLED_WITHIN = 20.0


def handled(samples: Samples, method: str, code: str, kind: str = "unary") -> float:
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_type=kind,
        grpc_service=SERVICE,
        grpc_method=method,
        grpc_code=code,
    )


@pytest.fixture
def store(start_store) -> Service:
    return start_store(args=METRICS)


async def test_store_counts_calls_by_method_and_code(store, stub):
    for number in range(3):
        await create(stub, f"hello {number}")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(author="", text="")), timeout=RPC_TIMEOUT
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetMessage(pb.GetMessageRequest(id="no-such"), timeout=RPC_TIMEOUT)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    async def all_counted() -> Samples | None:
        current = await scrape(store)
        total = sum(
            handled(current, method, code)
            for method, code in (
                ("CreateMessage", "OK"),
                ("CreateMessage", "INVALID_ARGUMENT"),
                ("GetMessage", "NOT_FOUND"),
            )
        )
        return current if total >= 5 else None

    # A refused call's status reaches the client as it is sent, a moment before the store's
    # handler returns and counts it: the scrape may come in between.
    samples = await wait_until(all_counted, RPC_TIMEOUT, what="the 5 calls counted")
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "CreateMessage"}
    assert handled(samples, "CreateMessage", "OK") == 3
    assert handled(samples, "CreateMessage", "INVALID_ARGUMENT") == 1
    assert handled(samples, "GetMessage", "NOT_FOUND") == 1
    assert value(samples, "grpc_server_started_total", **labels) == 4
    assert value(samples, "grpc_server_msg_received_total", **labels) == 4
    assert value(samples, "grpc_server_msg_sent_total", **labels) == 3
    assert value(samples, "grpc_server_handling_seconds_count", **labels) == 4
    # Three creates in a row from one client: each a transaction of its own, or shared.
    assert 1 <= value(samples, "ackbot_group_commit_batch_size_count") <= 3
    assert value(samples, "ackbot_group_commit_batch_size_sum") == 3

    async def pending_sampled() -> Samples | None:
        current = await scrape(store)
        return current if value(current, "ackbot_messages", state="PENDING") == 3 else None

    sampled = await wait_until(pending_sampled, SAMPLED_WITHIN, what="3 PENDING sampled")
    assert value(sampled, "ackbot_oldest_pending_age_seconds") > 0


async def test_a_bot_answering_two_messages_shows_in_both(store, stub, start_bot):
    bot = await start_bot(args=METRICS)
    for number in range(2):
        await create(stub, f"question {number}")

    async def store_settled() -> Samples | None:
        current = await scrape(store)
        return current if value(current, "ackbot_messages", state="PROCESSED") == 4 else None

    # 2 originals + 2 replies, once the sampler has seen them.
    samples = await wait_until(store_settled, SAMPLED_WITHIN, what="4 PROCESSED sampled")
    assert value(samples, "ackbot_deliveries_total") == 2
    for cause in ("failed", "handed_back", "stream_ended", "lease_expired", "store_died"):
        assert value(samples, "ackbot_redeliveries_total", cause=cause) == 0
    assert value(samples, "ackbot_dead_total") == 0
    assert value(samples, "ackbot_create_to_processed_seconds_count") == 2
    assert value(samples, "ackbot_messages", state="PENDING") == 0
    assert value(samples, "ackbot_oldest_pending_age_seconds") == 0
    # The bot settles on its Consume session, not by unary calls.
    assert handled(samples, "MarkProcessed", "OK") == 0
    # The session is open: started, not yet handled; each response is one message sent, each
    # request (the opening one, then frames of settlements) one received.
    session = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "Consume"}
    assert value(samples, "grpc_server_started_total", **session) == 1
    assert value(samples, "grpc_server_msg_sent_total", **session) >= 2
    assert value(samples, "grpc_server_msg_received_total", **session) >= 2

    bot_samples = await scrape(bot)
    assert value(bot_samples, "ackbot_bot_replies_total", outcome="answered") == 2
    assert value(bot_samples, "ackbot_bot_replies_total", outcome="failed") == 0
    assert value(bot_samples, "ackbot_bot_responder_seconds_count") == 2
    assert value(bot_samples, "ackbot_bot_failures_total", kind="responder_error") == 0
    # The bot's own server: the harness's health checks went through the interceptor.
    assert value(
        bot_samples,
        "grpc_server_handled_total",
        grpc_type="unary",
        grpc_service="grpc.health.v1.Health",
        grpc_method="Check",
        grpc_code="OK",
    )


async def test_redeliveries_are_counted_by_why_the_lease_ended(store, stub):
    """One message comes back for each cause a single store can see: released with a reason
    (failed), released without one (handed_back), its stream gone (stream_ended), its lease
    left to lapse (lease_expired). The steps are ordered so that no stream has room when the
    lapsed message becomes deliverable again: it is counted once."""
    causes = ("failed", "handed_back", "stream_ended", "lease_expired", "store_died")

    async def counted(expected: dict[str, int]) -> Samples | None:
        current = await scrape(store)
        got = {cause: value(current, "ackbot_redeliveries_total", cause=cause) for cause in causes}
        return current if all(got[cause] >= n for cause, n in expected.items()) else None

    await create(stub, "left to lapse", id="lapsed")
    holder = StreamReader(stub, consumer="holder", max_in_flight=1, lease_seconds=60)
    try:
        [lapsing] = await holder.take(1)
        for name in ("failed", "handed-back", "stream-ended"):
            await create(stub, name, id=name)
        other = StreamReader(stub, consumer="other", max_in_flight=3, lease_seconds=60)
        try:
            leases = {d.message.id: d.lease_token for d in await other.take(3)}
            for message_id, reason in (("failed", "boom"), ("handed-back", "")):
                # Not back before the test ends, so that each is counted once.
                request = pb.ReleaseMessageRequest(
                    id=message_id,
                    lease_token=leases[message_id],
                    reason=reason,
                    retry_after=seconds(300),
                )
                await stub.ReleaseMessage(request, timeout=RPC_TIMEOUT)
        finally:
            await other.close()  # "stream-ended" goes back with its stream
        await wait_until(lambda: counted({"stream_ended": 1}), SAMPLED_WITHIN, what="stream end")

        # Now the holder's lease lapses in a second: it keeps its slot (see StreamUnprocessed),
        # and no other stream is open to take the message again.
        shorten = pb.ExtendLeaseRequest(
            id="lapsed", lease_token=lapsing.lease_token, lease_duration=seconds(1)
        )
        await stub.ExtendLease(shorten, timeout=RPC_TIMEOUT)
        samples = await wait_until(
            lambda: counted({"lease_expired": 1}), SAMPLED_WITHIN, what="the lapse counted"
        )
    finally:
        await holder.close()
    counts = {cause: value(samples, "ackbot_redeliveries_total", cause=cause) for cause in causes}
    assert counts == {
        "failed": 1,
        "handed_back": 1,
        "stream_ended": 1,
        "lease_expired": 1,
        "store_died": 0,
    }


async def test_a_failing_responder_counts_failures(store, stub, start_bot):
    bot = await start_bot(responder=responders.spec("always_fails"), args=METRICS)
    await create(stub, "this one fails")

    async def failed() -> Samples | None:
        current = await scrape(bot)
        kind = value(current, "ackbot_bot_failures_total", kind="responder_error")
        return current if kind >= 1 else None

    samples = await wait_until(failed, RPC_TIMEOUT, what="a responder failure counted")
    assert value(samples, "ackbot_bot_replies_total", outcome="failed") >= 1
    assert value(samples, "ackbot_bot_replies_total", outcome="answered") == 0


def test_metrics_are_off_by_default(start_store):
    plain = start_store(name="plain")
    assert METRICS_ON.search(plain.log_text()) is None


def test_a_metrics_address_in_use_stops_the_store_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ackbot.store",
                "--listen",
                "127.0.0.1:0",
                "--db",
                f"sqlite+aiosqlite:///{tmp_path / 'in-use.db'}",
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


async def test_the_settlements_of_one_consume_request_share_one_transaction(store, stub):
    ids = [f"frame-{n}" for n in range(5)]
    for message_id in ids:
        await create(stub, f"text of {message_id}", id=message_id)
    # Room for one more than there is: the claim comes back short, so the slots the marks free
    # set off no further claim, and the marks are the only writes from here on.
    session = ConsumeSession(stub, consumer="framer", max_in_flight=6, lease_seconds=60)
    try:
        deliveries = [await session.next() for _ in ids]
        before = await scrape(store)
        marks = [
            session.settlement(
                mark_processed=pb.MarkProcessedRequest(
                    id=d.message.id,
                    lease_token=d.lease_token,
                    reply=pb.Message(author="framer", text="done"),
                )
            )
            for d in deliveries
        ]
        results = await session.settle(*marks)
        assert [r.status.code for r in results] == [0] * 5
        after = await scrape(store)
    finally:
        await session.close()
    batches = "ackbot_group_commit_batch_size_count"
    writes = "ackbot_group_commit_batch_size_sum"
    assert value(after, batches) - value(before, batches) == 1, "one transaction"
    assert value(after, writes) - value(before, writes) == 5
