"""Load and soak: 50 concurrent producers and 3 bots for a sustained period, then zero failed
calls, zero lost and zero duplicate replies, and the latency from create to reply committed.

Profiles, chosen by environment:
- short (default): ACKBOT_SOAK_SECONDS=60.
- long: `make test-long` runs it for SOAK_SECONDS (default 1800), beside the long chaos profiles.
Marked `long`, so `make test` leaves it out; `.venv/bin/python -m pytest -m long -s
tests/reliability/test_soak.py` runs the short one by hand.
ACKBOT_SOAK_RATE sets the total creates per second (default 100, spread evenly over the
producers, each on a fixed schedule so the load is steady rather than a burst).

The figures are printed on a line starting with "SOAK:" (pytest -s, or -rA shows captured
output). Latency is measured on the store's own clock: from the original's receive_time (its
create transaction) to its reply's receive_time (the MarkProcessed transaction that stored it),
so a busy test process cannot inflate it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.heavy import heavy
from tests.support.harness import check_answered_once, list_all, wait_settled

from .invariants import cross_row_problems

SOAK_SECONDS = float(os.environ.get("ACKBOT_SOAK_SECONDS") or 60)
RATE_PER_SECOND = float(os.environ.get("ACKBOT_SOAK_RATE") or 100)
PRODUCERS = 50
CHANNELS = 5
BOTS = 3
# Time for the backlog at the end to drain, and for listing and checking every message.
DRAIN_SECONDS = 60 + SOAK_SECONDS / 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.long,
    pytest.mark.timeout(SOAK_SECONDS + 3 * DRAIN_SECONDS + 60),
    heavy,
]


@pytest.fixture
def store(start_store, tmp_path):
    return start_store(db_path=tmp_path / "soak.db")


@dataclass
class ProducerStats:
    created: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)


async def producer(stub, number: int, stop_at: float, stats: ProducerStats) -> None:
    interval = PRODUCERS / RATE_PER_SECOND
    # Spread the producers over one interval, so the load is even rather than 50 at once.
    next_at = time.monotonic() + interval * number / PRODUCERS
    sequence = 0
    while next_at < stop_at:
        # Pacing a load generator to its schedule, not waiting for a condition.
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing
        message_id = f"soak-p{number:02d}-{sequence:07d}"
        message = pb.Message(id=message_id, author=f"producer-{number}", text=f"hi {message_id}")
        started = time.monotonic()
        try:
            await stub.CreateMessage(pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            stats.failures.append(f"{message_id}: {exc.code().name}: {exc.details()}")
        else:
            stats.created.append(message_id)
            stats.call_seconds.append(time.monotonic() - started)
        sequence += 1
        next_at += interval


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def test_soak_fifty_producers_three_bots(store, start_bot, tmp_path):
    personas = {f"soak-bot-{n}" for n in range(BOTS)}
    bots = await asyncio.gather(*(start_bot(persona=p, max_in_flight=16) for p in personas))
    channels = [grpc.aio.insecure_channel(store.address) for _ in range(CHANNELS)]
    try:
        stubs = [pb_grpc.MessageStoreStub(channel) for channel in channels]
        stats = ProducerStats()
        began = time.monotonic()
        await asyncio.gather(
            *(
                producer(stubs[n % CHANNELS], n, began + SOAK_SECONDS, stats)
                for n in range(PRODUCERS)
            )
        )
        produced_in = time.monotonic() - began
        assert not stats.failures, f"{len(stats.failures)} failed creates: {stats.failures[:5]}"

        stub = stubs[0]
        drain_began = time.monotonic()
        await wait_settled(stub, expected_processed=2 * len(stats.created), within=DRAIN_SECONDS)
        drained_in = time.monotonic() - drain_began
        messages = await list_all(stub)
    finally:
        for channel in channels:
            await channel.close()

    replies = check_answered_once(messages, stats.created, personas=personas)
    originals = {m.id: m for m in messages if not m.reply_to}
    assert len(originals) == len(stats.created), "messages nobody created"
    assert cross_row_problems(tmp_path / "soak.db") == []
    for bot in bots:
        assert bot.proc.poll() is None, bot.describe()
        # The bots' own calls: a failed MarkProcessed or stream would be logged here.
        assert " failed (" not in bot.log_text(), bot.describe()

    latencies_ms = [
        (reply.receive_time.ToNanoseconds() - originals[original_id].receive_time.ToNanoseconds())
        / 1e6
        for original_id, reply in replies.items()
    ]
    calls_ms = [seconds * 1e3 for seconds in stats.call_seconds]
    answered_by = {p: sum(r.author == p for r in replies.values()) for p in sorted(personas)}
    print(
        f"\nSOAK: {SOAK_SECONDS:g} s, {PRODUCERS} producers, {BOTS} bots: "
        f"{len(stats.created)} messages ({len(stats.created) / produced_in:.1f}/s), "
        f"0 failed calls, 0 lost, 0 duplicate replies; "
        f"create->reply committed p50 {statistics.median(latencies_ms):.1f} ms, "
        f"p99 {percentile(latencies_ms, 0.99):.1f} ms, max {max(latencies_ms):.1f} ms; "
        f"CreateMessage call p50 {statistics.median(calls_ms):.1f} ms, "
        f"p99 {percentile(calls_ms, 0.99):.1f} ms; drained in {drained_in:.1f} s; "
        f"replies per bot {answered_by}"
    )
