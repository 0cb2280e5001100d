"""A bot that hangs (SIGSTOP: alive, connected, but neither settling nor extending its leases):
its leases expire and its messages go to a healthy bot, messages created while it hangs are
answered too and none runs out of attempts, and when it wakes up its late replies are refused as
duplicates. The healthy bot is there from the start of the hang, or arrives only after the hang
has lasted longer than max_attempts leases (a hung bot must not use up its messages' attempts).

What this adds to the neighbours: tests/integration/test_bot_crash.py kills the bot (its stream
dies, so the store releases its leases at once); here the stream stays open, so only lease expiry
frees the messages, and the hung bot's stream keeps free slots the store could keep filling.
A slow bot that extends its lease is tests/integration/test_leases.py; a reply that keeps failing
ending DEAD is tests/integration/test_dead_letter.py.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ackbot.testing import responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.heavy import heavy
from tests.support.harness import (
    UNSETTLED_STATES,
    check_answered_once,
    create,
    create_many,
    list_all,
)

pytestmark = [pytest.mark.slow, heavy]

MAX_ATTEMPTS = 3
IN_FLIGHT = 4
LEASE_SECONDS = 2
# Longer than a lease, so the hung bot is mid-reply (and extending) when it is stopped.
REPLY_SECONDS = 3
# More than MAX_ATTEMPTS leases, yet under the store's keepalive (20 s ping + 10 s timeout): the
# hung bot's stream stays open the whole time, the harder case.
HUNG_SECONDS = 8
CREATED_WHILE_HUNG = 30


@pytest.fixture
def store(start_store):
    return start_store(args=["--max-attempts", str(MAX_ATTEMPTS)])


@pytest.mark.parametrize("healthy_joins", ["at-once", "after-the-hang"])
async def test_a_hung_bots_messages_go_to_a_healthy_bot_and_its_late_replies_are_refused(
    stub, store, start_bot, healthy_joins
):
    hung = await start_bot(
        persona="hung",
        max_in_flight=IN_FLIGHT,
        lease_seconds=LEASE_SECONDS,
        responder=responders.spec("slow"),
        env={"ACKBOT_TEST_RESPONDER_DELAY": str(REPLY_SECONDS)},
    )
    before = await create_many(stub, 2 * IN_FLIGHT, clients=4, prefix="before")

    async def hung_bot_busy():
        leased = await list_all(stub, state=pb.MESSAGE_STATE_LEASED)
        return leased if len(leased) == IN_FLIGHT else None

    held = [m.id for m in await wait_until(hung_bot_busy, within=20, what="the bot is busy")]
    os.kill(hung.proc.pid, signal.SIGSTOP)
    try:
        if healthy_joins == "at-once":
            await start_bot(persona="healthy", max_in_flight=IN_FLIGHT)
        during = []
        for number in range(CREATED_WHILE_HUNG):
            # Spread over the hang, so that lease expiries and new messages interleave.
            await asyncio.sleep(HUNG_SECONDS / CREATED_WHILE_HUNG)  # pacing
            during.append((await create(stub, f"while hung {number}", id=f"during-{number}")).id)
        ids = before + during
        if healthy_joins == "after-the-hang":
            await start_bot(persona="healthy", max_in_flight=IN_FLIGHT)

        async def settled_or_dead():
            dead = await list_all(stub, state=pb.MESSAGE_STATE_DEAD)
            if dead:
                return dead
            for state in UNSETTLED_STATES:
                if await list_all(stub, state=state):
                    return None
            return True

        outcome = await wait_until(settled_or_dead, within=60, what="every message settled")
        if outcome is not True:
            dead_ids = [m.id for m in outcome]
            deliveries = [
                line.split(" DEBUG ")[-1]
                for line in store.log_text().splitlines()
                if "delivered message_id=" in line
                and line.split("message_id=")[1].split()[0] in dead_ids
            ]
            raise AssertionError(
                f"{len(dead_ids)} messages went DEAD instead of moving to the healthy bot: "
                f"{dead_ids}; their deliveries: {deliveries[:12]}"
            )
        assert hung.proc.poll() is None, "stopped, not dead"
        replies = check_answered_once(await list_all(stub), ids, personas={"healthy"})
        assert {replies[message_id].author for message_id in held} == {"healthy"}
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)

    # Awake again: each reply it was writing is refused (already answered), or dropped once
    # it finds its lease gone. Either way, no second reply.
    def settled_late(message_id: str) -> bool:
        lines = [
            line for line in hung.log_text().splitlines() if f"message_id={message_id}" in line
        ]
        return any("duplicate prevented" in line or "abandoning" in line for line in lines)

    await wait_until(
        lambda: all(settled_late(message_id) for message_id in held),
        within=30,
        what="the woken bot gave up its stale replies",
    )
    messages = await list_all(stub)
    check_answered_once(messages, ids, personas={"healthy"})
    assert not [m.id for m in messages if m.state == pb.MESSAGE_STATE_DEAD]
    attempts = sorted(m.delivery_attempts for m in messages if not m.reply_to)
    print(f"hung bot: delivery attempts per message, highest {attempts[-5:]}")
