"""Several bots on one store: every message goes to one of them at a time, answered once."""

from __future__ import annotations

import collections

import pytest

from ackbot.testing import responders
from tests.support.harness import check_answered_once, create_many, list_all, wait_settled

pytestmark = pytest.mark.slow

PERSONAS = ("ada", "bea", "cyd")
COUNT = 330


async def test_three_bots_answer_every_message_exactly_once(stub, start_bot):
    for persona in PERSONAS:
        # A short think time and little room each, so no single bot can take everything.
        await start_bot(
            persona=persona,
            max_in_flight=4,
            responder=responders.spec("slow"),
            env={"ACKBOT_TEST_RESPONDER_DELAY": "0.01"},
        )

    ids = await create_many(stub, COUNT, clients=10, prefix="three")
    await wait_settled(stub, expected_processed=2 * COUNT, within=90)

    messages = await list_all(stub)
    assert len(messages) == 2 * COUNT
    replies = check_answered_once(messages, ids, personas=PERSONAS)
    work = collections.Counter(reply.author for reply in replies.values())
    assert len(work) > 1, f"one bot did all the work: {dict(work)}"
