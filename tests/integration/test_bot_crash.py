"""A bot killed with SIGKILL mid-work: the store releases its leases as soon as its stream dies,
and another bot answers each of those messages exactly once."""

from __future__ import annotations

import pytest

from ackbot.testing import responders, wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import check_answered_once, create_many, get, list_all, wait_settled

pytestmark = pytest.mark.slow

IN_FLIGHT = 8
# Far longer than the test waits for the release: a message coming back proves the release
# on stream death, not lease expiry.
LEASE_SECONDS = 60


async def test_messages_of_a_killed_bot_are_redelivered_and_answered_once(stub, start_bot):
    ids = await create_many(stub, 20, clients=4, prefix="crash")
    doomed = await start_bot(
        persona="doomed",
        max_in_flight=IN_FLIGHT,
        lease_seconds=LEASE_SECONDS,
        responder=responders.spec("slow"),
        env={"ACKBOT_TEST_RESPONDER_DELAY": "30"},
    )

    async def full_leases():
        leased = await list_all(stub, state=pb.MESSAGE_STATE_LEASED)
        return leased if len(leased) == IN_FLIGHT else None

    leased = await wait_until(full_leases, within=15, what=f"{IN_FLIGHT} messages LEASED")
    held = [m.id for m in leased]

    assert await doomed.akill() == -9

    async def released():
        states = [(await get(stub, message_id)).state for message_id in held]
        return all(state == pb.MESSAGE_STATE_PENDING for state in states)

    await wait_until(released, within=10, what="the dead bot's leases released")

    await start_bot(persona="rescuer", max_in_flight=IN_FLIGHT)
    await wait_settled(stub, expected_processed=2 * len(ids), within=60)

    messages = await list_all(stub)
    replies = check_answered_once(messages, ids, personas={"rescuer"})
    assert {replies[message_id].author for message_id in held} == {"rescuer"}
    for message_id in held:
        message = await get(stub, message_id)
        # The delivery to the dead bot counts as an attempt (a message that kills bots must
        # not loop forever); the rescuer's is the second.
        assert message.delivery_attempts >= 2, message
