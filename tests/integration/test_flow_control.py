"""Flow control: never more unsettled deliveries on a stream than its max_in_flight."""

from __future__ import annotations

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import StreamReader, count_state, create, list_all

# How long the test watches for a delivery that must not come. Deliveries are pushed within
# milliseconds, so a wrong one would show up well inside this window.
QUIET_WINDOW = 1.0


async def test_max_in_flight_bounds_unsettled_deliveries(stub, settler):
    ids = [f"flow-{n:02d}" for n in range(10)]
    for message_id in ids:
        await create(stub, f"text of {message_id}", id=message_id)

    reader = StreamReader(stub, consumer="flow-test", max_in_flight=3, lease_seconds=300)
    try:
        first = await reader.take(3)
        assert [d.message.id for d in first] == ids[:3], "oldest first"
        assert all(d.attempt == 1 and d.lease_token for d in first)
        await reader.expect_nothing(QUIET_WINDOW)
        assert await count_state(stub, pb.MESSAGE_STATE_LEASED) == 3
        assert await count_state(stub, pb.MESSAGE_STATE_PENDING) == 7

        # New work does not overflow the window either.
        await create(stub, "late arrival", id="flow-late")
        await reader.expect_nothing(QUIET_WINDOW)
        assert await count_state(stub, pb.MESSAGE_STATE_LEASED) == 3

        # Settling one makes room for exactly one more.
        await settler.MarkProcessed(
            pb.MarkProcessedRequest(
                id=first[0].message.id,
                lease_token=first[0].lease_token,
                reply=pb.Message(author="flow-bot", text="done"),
            ),
            timeout=RPC_TIMEOUT,
        )
        fourth = await reader.next()
        assert fourth.message.id == ids[3]
        await reader.expect_nothing(QUIET_WINDOW)
        leased = await list_all(stub, state=pb.MESSAGE_STATE_LEASED)
        assert [m.id for m in leased] == ids[1:4]

        # A release (without a reason: never started) makes room too, and gives the attempt back.
        released = await settler.ReleaseMessage(
            pb.ReleaseMessageRequest(id=first[1].message.id, lease_token=first[1].lease_token),
            timeout=RPC_TIMEOUT,
        )
        assert released.message.delivery_attempts == 0
        fifth = await reader.next()
        assert fifth.message.id == first[1].message.id, "the released message is oldest"
        await reader.expect_nothing(QUIET_WINDOW)
        assert await count_state(stub, pb.MESSAGE_STATE_LEASED) == 3
    finally:
        await reader.close()
