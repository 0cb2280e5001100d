"""The checker can fail: hand-made listings, each breaking one promise, are each reported under
the right check; a clean listing passes."""

from __future__ import annotations

import pytest

from ackbot.v1 import message_store_pb2 as pb
from chaos import check as checks
from chaos.check import check
from chaos.run import Outcome, render
from chaos.workload import CreateLedger, PlannedMessage, make_plan

PERSONAS = ("bot-a",)
PROCESSED, DEAD = pb.MESSAGE_STATE_PROCESSED, pb.MESSAGE_STATE_DEAD


def planned(message_id: str, must_fail: bool = False) -> PlannedMessage:
    return PlannedMessage(
        id=message_id, author="alice", text=f"text of {message_id}", due=0.0, must_fail=must_fail
    )


PLAN = [planned("m1"), planned("m2"), planned("f1", must_fail=True)]


def original(message_id: str, *, state=PROCESSED, attempts: int = 1, **fields) -> pb.Message:
    values = {"author": "alice", "text": f"text of {message_id}", "reply_id": f"r-{message_id}"}
    if state != PROCESSED:
        values["reply_id"] = ""
    values.update(fields)
    return pb.Message(id=message_id, state=state, delivery_attempts=attempts, **values)


def reply(reply_to: str, *, message_id: str = "", **fields) -> pb.Message:
    values = {"author": "bot-a", "text": "hi", "state": PROCESSED}
    values.update(fields)
    return pb.Message(id=message_id or f"r-{reply_to}", reply_to=reply_to, **values)


def clean_listing() -> list[pb.Message]:
    return [
        original("m1"),
        reply("m1"),
        original("m2", attempts=3),
        reply("m2"),
        original("f1", state=DEAD, attempts=8, last_error="responder failed on purpose"),
    ]


def ledger(**fields) -> CreateLedger:
    return CreateLedger(acknowledged={"m1", "m2", "f1"}, **fields)


def test_a_clean_listing_passes_with_its_figures():
    verdict = check(clean_listing(), PLAN, ledger(), PERSONAS)
    assert verdict.ok, verdict.violations
    assert verdict.figures["processed"] == 2
    assert verdict.figures["dead"] == verdict.figures["dead_expected"] == 1
    assert verdict.figures["redelivered"] == verdict.figures["redelivered_answered_once"] == 1


def without(message_id: str) -> list[pb.Message]:
    return [m for m in clean_listing() if m.id != message_id]


def replaced(message: pb.Message) -> list[pb.Message]:
    return [message if m.id == message.id else m for m in clean_listing()]


VIOLATING = {
    "acknowledged create lost": (without("m1"), checks.CREATES_KEPT),
    "content changed": (replaced(original("m1", text="other")), checks.CREATES_KEPT),
    "second reply": ([*clean_listing(), reply("m1", message_id="r2")], checks.ONE_REPLY),
    "processed, no reply": (without("r-m1"), checks.ONE_REPLY),
    "left LEASED": (replaced(original("m2", state=pb.MESSAGE_STATE_LEASED)), checks.SETTLED),
    "left PENDING": (replaced(original("m2", state=pb.MESSAGE_STATE_PENDING)), checks.SETTLED),
    "DEAD, not made to fail": (
        replaced(original("m2", state=DEAD, attempts=8)),
        checks.DEAD_ONLY_FAILING,
    ),
    "made to fail, yet PROCESSED": (replaced(original("f1")), checks.DEAD_ONLY_FAILING),
    "a reply answers a reply": (
        [*clean_listing(), reply("r-m1", message_id="r3")],
        checks.REPLIES_WELL_FORMED,
    ),
    "a reply was delivered": (
        replaced(reply("m1", delivery_attempts=1)),
        checks.REPLIES_WELL_FORMED,
    ),
    "a reply by a stranger": (replaced(reply("m1", author="mallory")), checks.REPLIES_WELL_FORMED),
    "an original nobody created": (
        [*clean_listing(), original("x9", state=DEAD, attempts=1)],
        checks.NO_STRANGERS,
    ),
}


@pytest.mark.parametrize(("listing", "expected_check"), VIOLATING.values(), ids=VIOLATING.keys())
def test_each_violation_is_reported_under_its_check(listing, expected_check):
    verdict = check(listing, PLAN, ledger(), PERSONAS)
    assert not verdict.ok
    assert verdict.count(expected_check) >= 1, verdict.violations


def test_creates_answered_with_errors_or_never_are_violations():
    failed = ledger(failures=["create m1: ALREADY_EXISTS"], gave_up=["m2"])
    verdict = check(clean_listing(), PLAN, failed, PERSONAS)
    assert verdict.count(checks.CREATES_ANSWERED) == 2


def test_a_service_that_exited_by_itself_is_a_violation():
    exited = ["store exited by itself with code 1"]
    verdict = check(clean_listing(), PLAN, ledger(), PERSONAS, exited)
    assert verdict.count(checks.SERVICES_UP) == 1


def test_a_failing_run_prints_the_seed_that_replays_it():
    outcome = Outcome(seed=4242, profile="ci", messages=2000, workdir="/tmp/x")
    outcome.violations = ["every original ...: m1 (PROCESSED after 2 deliveries): 2 replies"]
    outcome.seconds = {"drain": 1.0}
    text = render(outcome)
    assert "--seed 4242" in text.splitlines()[-1]
    assert text.splitlines()[-1].startswith("result: FAIL")


def test_the_same_seed_plans_the_same_messages():
    assert make_plan(7, 50, 4, 10.0, 0.1) == make_plan(7, 50, 4, 10.0, 0.1)
    assert make_plan(7, 50, 4, 10.0, 0.1) != make_plan(8, 50, 4, 10.0, 0.1)
