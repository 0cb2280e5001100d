"""What the bot hands a responder of a conversation's earlier turns: the newest that fit the
turn and character budgets, oldest first, its own replies marked as its own."""

from __future__ import annotations

from ackbot.bot.policy import trim_turns
from ackbot.bot.responder import PersonaResponder, Turn
from ackbot.v1 import message_store_pb2 as pb

NEWEST_FIRST = [
    pb.Message(id="m4", author="bob", text="four", sequence=4),
    pb.Message(id="r3", author="Ava", text="three", sequence=3, reply_to="m2"),
    pb.Message(id="m2", author="alice", text="two", sequence=2),
    pb.Message(id="r1", author="Other", text="one", sequence=1, reply_to="m0"),
]


def test_the_newest_turns_within_the_turn_budget_oldest_first():
    assert trim_turns(NEWEST_FIRST, "Ava", turns=3, chars=1000) == (
        Turn("alice", "two"),
        Turn("Ava", "three", mine=True),
        Turn("bob", "four"),
    )


def test_another_bots_reply_is_a_user_turn():
    assert trim_turns(NEWEST_FIRST, "Ava", turns=10, chars=1000)[0] == Turn("Other", "one")


def test_the_character_budget_stops_at_the_first_turn_that_does_not_fit():
    assert trim_turns(NEWEST_FIRST, "Ava", turns=10, chars=len("four") + len("three")) == (
        Turn("Ava", "three", mine=True),
        Turn("bob", "four"),
    )
    assert trim_turns(NEWEST_FIRST, "Ava", turns=0, chars=1000) == ()


def test_the_persona_asks_for_no_context():
    assert getattr(PersonaResponder("Ava"), "context_turns", 0) == 0
