"""The bug ackbot was written for: a message whose id and client clock are a millisecond apart
was looked up by the wrong key and never answered. Found by id alone, answered once."""

from __future__ import annotations

from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    check_answered_once,
    create,
    get,
    list_all,
    timestamp_ms,
    wait_settled,
    wait_state,
)

ORIGIN_ID = "1761333653305-h0jgid21p"
ORIGIN_CREATE_MS = 1761333653306


async def test_origin_message_is_found_by_id_and_answered_once(stub, start_bot):
    # Neighbours that share the clock or the id's time prefix must not be confused with it.
    neighbours = {
        "1761333653306-aaaaaaaa1": ORIGIN_CREATE_MS,
        "1761333653305-zzzzzzzz9": ORIGIN_CREATE_MS - 1,
        "1761333653305": ORIGIN_CREATE_MS,
    }
    created = await create(
        stub, "hello from the origin bug", id=ORIGIN_ID, create_time=timestamp_ms(ORIGIN_CREATE_MS)
    )
    for message_id, ms in neighbours.items():
        await create(stub, f"neighbour {message_id}", id=message_id, create_time=timestamp_ms(ms))
    assert created.id == ORIGIN_ID
    assert created.create_time.ToMilliseconds() == ORIGIN_CREATE_MS

    found = await get(stub, ORIGIN_ID)
    assert found.id == ORIGIN_ID
    assert found.text == "hello from the origin bug"
    assert found.create_time == timestamp_ms(ORIGIN_CREATE_MS)

    await start_bot(persona="ackbot")
    processed = await wait_state(stub, ORIGIN_ID, pb.MESSAGE_STATE_PROCESSED, within=30)
    await wait_settled(stub, expected_processed=2 * (1 + len(neighbours)), within=30)

    replies = check_answered_once(await list_all(stub), [ORIGIN_ID, *neighbours])
    assert processed.reply_id == replies[ORIGIN_ID].id
    origin_replies = await list_all(stub, reply_to=ORIGIN_ID)
    assert [r.id for r in origin_replies] == [replies[ORIGIN_ID].id]

    final = await get(stub, ORIGIN_ID)
    assert final.create_time == timestamp_ms(ORIGIN_CREATE_MS), "the client's clock is kept"
    assert final.create_time.ToNanoseconds() == ORIGIN_CREATE_MS * 1_000_000
    for message_id, ms in neighbours.items():
        assert (await get(stub, message_id)).create_time == timestamp_ms(ms)
