"""500 messages from 10 concurrent clients, a bot running: each answered exactly once."""

from __future__ import annotations

import pytest

from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import check_answered_once, create_many, list_all, wait_settled

pytestmark = pytest.mark.slow


async def test_500_messages_from_10_clients_each_answered_once(stub, start_bot):
    await start_bot(persona="ackbot", max_in_flight=16)

    ids = await create_many(stub, 500, clients=10, prefix="c10")
    await wait_settled(stub, expected_processed=1000, within=90)

    messages = await list_all(stub)
    assert len(messages) == 1000, "500 originals and 500 replies, nothing else"
    replies = check_answered_once(messages, ids, personas={"ackbot"})
    for message_id in ids[::50]:
        by_filter = await list_all(stub, reply_to=message_id)
        assert [r.id for r in by_filter] == [replies[message_id].id]
    # A reply is never work: nothing ever delivered one, so it has no attempts and no reply.
    assert not await list_all(stub, reply_to=next(iter(replies.values())).id)
    originals = [m for m in messages if not m.reply_to]
    assert all(m.delivery_attempts >= 1 for m in originals)
    assert {m.state for m in messages} == {pb.MESSAGE_STATE_PROCESSED}
