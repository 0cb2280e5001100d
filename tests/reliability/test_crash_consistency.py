"""The store killed with SIGKILL in the middle of bursts of concurrent CreateMessage and
MarkProcessed, restarted on the same SQLite file, several rounds: every call that returned OK is
there after the restart, and each MarkProcessed committed its reply and PROCESSED together or not
at all.

The kill lands after a seeded, random number of acknowledged calls (counted, not timed, so a slow
machine moves the moment in time but not the amount of work in flight around it). A failing run
prints its seed; ACKBOT_CRASH_SEED=<seed> replays the same kill points.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
from dataclasses import dataclass, field

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import list_all

from .invariants import cross_row_problems, processed_without_reply

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("ACKBOT_CRASH_SEED") or random.randrange(10**6))
ROUNDS = 5
CHANNELS = 4
CLIENTS_PER_CHANNEL = 8
# Acknowledged calls before the kill: at least enough for the group commit to be gathering
# batches from every client, few enough to keep a round around a second.
KILL_AFTER = (150, 600)
AUTHOR = "crash-tester"
BOT = "crash-bot"


@dataclass
class Ledger:
    """What the clients were told: acknowledged calls, and calls whose answer the kill took."""

    created: dict[str, str] = field(default_factory=dict)
    unsure_creates: dict[str, str] = field(default_factory=dict)
    marked: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (reply id, text)
    unsure_marks: dict[str, str] = field(default_factory=dict)  # id -> reply text
    unmarked: collections.deque[str] = field(default_factory=collections.deque)
    errors_before_kill: list[str] = field(default_factory=list)
    # Interrupted calls found committed after the restart, and found not committed: both
    # above zero shows the kills landed on writes in flight, not between them.
    interrupted_committed: int = 0
    interrupted_lost: int = 0


def reply_text(message_id: str) -> str:
    return f"the answer to {message_id}"


async def create_call(stub, message_id: str, text: str) -> pb.CreateMessageResponse:
    message = pb.Message(id=message_id, author=AUTHOR, text=text)
    return await stub.CreateMessage(pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT)


async def mark_call(stub, message_id: str) -> pb.MarkProcessedResponse:
    reply = pb.Message(author=BOT, text=reply_text(message_id))
    return await stub.MarkProcessed(
        pb.MarkProcessedRequest(id=message_id, reply=reply), timeout=RPC_TIMEOUT
    )


async def burst_client(
    stub, name: str, ledger: Ledger, acked: list[int], target: int, reached: asyncio.Event
) -> None:
    """Creates a message, marks an older acknowledged one, and again, until a call fails."""

    def acknowledged() -> None:
        acked[0] += 1
        if acked[0] >= target:
            reached.set()

    for number in itertools.count():
        message_id = f"{name}-{number}"
        text = f"burst message {message_id}"
        ledger.unsure_creates[message_id] = text
        try:
            response = await create_call(stub, message_id, text)
        except grpc.aio.AioRpcError as exc:
            if not reached.is_set():
                ledger.errors_before_kill.append(f"create {message_id}: {exc.code().name}")
            return
        del ledger.unsure_creates[message_id]
        assert not response.already_existed
        ledger.created[message_id] = text
        ledger.unmarked.append(message_id)
        acknowledged()

        # Mark the oldest waiting message, so marks of one round hit creates of the last.
        original = ledger.unmarked.popleft()
        ledger.unsure_marks[original] = reply_text(original)
        try:
            marked = await mark_call(stub, original)
        except grpc.aio.AioRpcError as exc:
            if not reached.is_set():
                ledger.errors_before_kill.append(f"mark {original}: {exc.code().name}")
            return
        del ledger.unsure_marks[original]
        assert not marked.already_processed
        assert marked.reply.text == reply_text(original)
        ledger.marked[original] = (marked.reply.id, marked.reply.text)
        acknowledged()


async def check_and_resolve(stub, ledger: Ledger, db_path, seed_note: str) -> None:
    """After a restart: what was acknowledged is there; what the kill interrupted is all there
    or not at all. Then retries those calls, as a client would, so the ledger is exact again."""
    messages = {m.id: m for m in await list_all(stub)}
    problems: list[str] = []
    for message_id, text in ledger.created.items():
        stored = messages.get(message_id)
        if stored is None:
            problems.append(f"acknowledged create {message_id} lost")
        elif (stored.author, stored.text) != (AUTHOR, text):
            problems.append(f"{message_id} holds {stored.author!r}: {stored.text!r}")
    for message_id, (reply_id, text) in ledger.marked.items():
        stored = messages.get(message_id)
        reply = messages.get(reply_id)
        if stored is None or stored.state != pb.MESSAGE_STATE_PROCESSED:
            problems.append(f"acknowledged mark of {message_id} lost: {stored}")
        elif stored.reply_id != reply_id:
            problems.append(f"{message_id} names reply {stored.reply_id!r}, not {reply_id}")
        if reply is None or reply.text != text or reply.reply_to != message_id:
            problems.append(f"acknowledged reply {reply_id} to {message_id} lost: {reply}")
    for message_id, text in ledger.unsure_creates.items():
        stored = messages.get(message_id)
        if stored is not None and stored.text != text:
            problems.append(f"interrupted create {message_id} half there: {stored}")
    for message_id, text in ledger.unsure_marks.items():
        stored = messages[message_id]
        if stored.state == pb.MESSAGE_STATE_PROCESSED:
            if messages[stored.reply_id].text != text:
                problems.append(f"interrupted mark of {message_id} stored another reply")
        elif stored.reply_id:
            problems.append(f"{message_id} has a reply but is {stored.state}")
    expected_processed = set(ledger.marked) | set(ledger.unsure_marks)
    for message in messages.values():
        if message.reply_to:
            continue
        if message.id not in ledger.created and message.id not in ledger.unsure_creates:
            problems.append(f"{message.id} exists but was never created")
        if message.state == pb.MESSAGE_STATE_PROCESSED and message.id not in expected_processed:
            problems.append(f"{message.id} is PROCESSED but nobody marked it")
    problems += cross_row_problems(db_path)
    problems += [f"{m} PROCESSED without its reply" for m in processed_without_reply(db_path)]
    assert not problems, f"{seed_note}: {len(problems)} problems, first 20: {problems[:20]}"

    # The clients' retries: idempotent, and they report what the first attempt stored.
    for message_id, text in list(ledger.unsure_creates.items()):
        response = await create_call(stub, message_id, text)
        assert response.already_existed == (message_id in messages), seed_note
        ledger.interrupted_committed += response.already_existed
        ledger.interrupted_lost += not response.already_existed
        ledger.created[message_id] = text
        ledger.unmarked.append(message_id)
    ledger.unsure_creates.clear()
    for message_id in list(ledger.unsure_marks):
        response = await mark_call(stub, message_id)
        stored = messages[message_id]
        was_processed = stored.state == pb.MESSAGE_STATE_PROCESSED
        assert response.already_processed == was_processed, seed_note
        ledger.interrupted_committed += was_processed
        ledger.interrupted_lost += not was_processed
        if was_processed:
            assert response.reply.id == stored.reply_id, seed_note
        ledger.marked[message_id] = (response.reply.id, response.reply.text)
    ledger.unsure_marks.clear()


async def test_acknowledged_writes_survive_sigkill_mid_burst(start_store, tmp_path):
    seed_note = f"ACKBOT_CRASH_SEED={SEED}"
    rng = random.Random(SEED)
    db_path = tmp_path / "crash.db"
    ledger = Ledger()
    kills_with_calls_in_flight = 0
    for round_number in range(ROUNDS):
        store = await start_store.started(name=f"store-round{round_number}", db_path=db_path)
        channels = [grpc.aio.insecure_channel(store.address) for _ in range(CHANNELS)]
        try:
            stubs = [pb_grpc.MessageStoreStub(channel) for channel in channels]
            if round_number:
                await check_and_resolve(stubs[0], ledger, db_path, seed_note)
            target = rng.randint(*KILL_AFTER)
            reached = asyncio.Event()
            acked = [0]
            clients = [
                asyncio.create_task(
                    burst_client(
                        stubs[n % CHANNELS], f"r{round_number}c{n}", ledger, acked, target, reached
                    )
                )
                for n in range(CHANNELS * CLIENTS_PER_CHANNEL)
            ]
            await asyncio.wait_for(reached.wait(), timeout=60)
            # Straight from the loop, with no await in between: the calls in flight now are the
            # ones the kill interrupts.
            store.proc.kill()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=RPC_TIMEOUT + 5)
            await store.akill()
            in_flight = len(ledger.unsure_creates) + len(ledger.unsure_marks)
            kills_with_calls_in_flight += in_flight > 0
            assert not ledger.errors_before_kill, f"{seed_note}: {ledger.errors_before_kill[:5]}"
        finally:
            for channel in channels:
                await channel.close()

    last = await start_store.started(name="store-final", db_path=db_path)
    async with grpc.aio.insecure_channel(last.address) as channel:
        await check_and_resolve(pb_grpc.MessageStoreStub(channel), ledger, db_path, seed_note)
    print(
        f"crash consistency ({seed_note}): {ROUNDS} kills, {kills_with_calls_in_flight} with "
        f"calls in flight ({ledger.interrupted_committed} found committed, "
        f"{ledger.interrupted_lost} not); {len(ledger.created)} creates and "
        f"{len(ledger.marked)} marks checked"
    )
    # The test is only worth something if kills really landed mid-call.
    assert kills_with_calls_in_flight >= ROUNDS - 1, seed_note
