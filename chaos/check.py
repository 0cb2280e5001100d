"""The verdict: the store's final contents compared with what the producers were told.

Pure functions over plain data (a listing of every message, the plan, the ledger), so a test can
feed a hand-made violating dataset and see each violation named.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ackbot.v1 import message_store_pb2 as pb

from .workload import CreateLedger, PlannedMessage

_UNSETTLED = (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED)


# The checks, in the order the summary prints them; each violation names one.
CREATES_ANSWERED = "creates answered OK or retried (no other error)"
CREATES_KEPT = "every acknowledged create exists, content intact"
NO_STRANGERS = "no original that no producer created"
SETTLED = "nothing left PENDING or LEASED"
ONE_REPLY = "every original the responder answers has exactly one reply"
DEAD_ONLY_FAILING = "DEAD exactly where the responder fails"
REPLIES_WELL_FORMED = "replies: born PROCESSED, by a bot, never answered"
SERVICES_UP = "no service exited unless a fault stopped it"
CHECKS = (
    SERVICES_UP,
    CREATES_ANSWERED,
    CREATES_KEPT,
    NO_STRANGERS,
    SETTLED,
    ONE_REPLY,
    DEAD_ONLY_FAILING,
    REPLIES_WELL_FORMED,
)


@dataclass(frozen=True)
class Violation:
    check: str
    detail: str


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def count(self, check: str) -> int:
        return sum(v.check == check for v in self.violations)


def _state(message: pb.Message) -> str:
    return pb.MessageState.Name(message.state).removeprefix("MESSAGE_STATE_")


def check(
    messages: Sequence[pb.Message],
    plan: Iterable[PlannedMessage],
    ledger: CreateLedger,
    personas: Iterable[str],
    exited: Iterable[str] = (),
) -> Verdict:
    """Every violation of the contract that the final listing shows, and the figures.

    `exited` describes the services found dead that no fault had stopped.
    """
    verdict = Verdict()
    found = verdict.violations
    found.extend(Violation(SERVICES_UP, what) for what in exited)
    planned = {p.id: p for p in plan}
    by_id = {m.id: m for m in messages}
    replies = _replies_by_original(messages)
    originals = [m for m in messages if not m.reply_to]

    found.extend(Violation(CREATES_ANSWERED, text) for text in ledger.failures)
    found.extend(
        Violation(CREATES_ANSWERED, f"{message_id}: create never answered OK")
        for message_id in ledger.gave_up
    )
    for message_id in sorted(ledger.acknowledged - by_id.keys()):
        found.append(Violation(CREATES_KEPT, f"{message_id}: create returned OK, message missing"))
    for original in originals:
        expected = planned.get(original.id)
        if expected is None:
            found.append(Violation(NO_STRANGERS, f"{original.id}: never created by a producer"))
            continue
        if (original.author, original.text) != (expected.author, expected.text):
            found.append(Violation(CREATES_KEPT, f"{original.id}: stored content differs"))
        found.extend(_check_outcome(original, expected, replies.get(original.id, [])))
    found.extend(_check_replies(by_id, replies, set(personas)))

    # The messages made to fail are redelivered by design; the figure is about the others.
    redelivered = [
        m
        for m in originals
        if m.delivery_attempts > 1 and m.id in planned and not planned[m.id].must_fail
    ]
    verdict.figures = {
        "originals": len(originals),
        "replies": sum(len(r) for r in replies.values()),
        "processed": sum(m.state == pb.MESSAGE_STATE_PROCESSED for m in originals),
        "dead": sum(m.state == pb.MESSAGE_STATE_DEAD for m in originals),
        "dead_expected": sum(p.must_fail for p in planned.values()),
        "processed_slow": sum(
            m.state == pb.MESSAGE_STATE_PROCESSED and m.id in planned and planned[m.id].slow
            for m in originals
        ),
        "left_unsettled": sum(m.state in _UNSETTLED for m in originals),
        "redelivered": len(redelivered),
        "redelivered_answered_once": sum(
            m.state == pb.MESSAGE_STATE_PROCESSED and len(replies.get(m.id, [])) == 1
            for m in redelivered
        ),
        "max_delivery_attempts": max((m.delivery_attempts for m in redelivered), default=0),
        "creates_acknowledged": len(ledger.acknowledged),
        "creates_retried_already_existed": len(ledger.already_existed),
        "create_retries": sum(ledger.retries.values()),
    }
    return verdict


def _replies_by_original(messages: Iterable[pb.Message]) -> dict[str, list[pb.Message]]:
    replies: dict[str, list[pb.Message]] = defaultdict(list)
    for message in messages:
        if message.reply_to:
            replies[message.reply_to].append(message)
    return replies


def _check_outcome(
    original: pb.Message, expected: PlannedMessage, answers: list[pb.Message]
) -> list[Violation]:
    where = f"{original.id} ({_state(original)} after {original.delivery_attempts} deliveries)"
    if original.state in _UNSETTLED:
        return [Violation(SETTLED, f"{where}: left unsettled after the drain")]
    if expected.must_fail:
        if original.state != pb.MESSAGE_STATE_DEAD or answers:
            detail = f"{where}, {len(answers)} replies: the responder always fails on it"
            return [Violation(DEAD_ONLY_FAILING, detail)]
        return []
    found = []
    if original.state == pb.MESSAGE_STATE_DEAD:
        detail = f"{where}: the responder answers it; last error {original.last_error!r}"
        found.append(Violation(DEAD_ONLY_FAILING, detail))
    if len(answers) != 1:
        found.append(Violation(ONE_REPLY, f"{where}: {len(answers)} replies"))
    elif original.reply_id != answers[0].id:
        detail = f"{where}: reply_id {original.reply_id!r} but its reply is {answers[0].id}"
        found.append(Violation(ONE_REPLY, detail))
    return found


def _check_replies(
    by_id: Mapping[str, pb.Message], replies: Mapping[str, list[pb.Message]], personas: set[str]
) -> list[Violation]:
    found = []
    for reply_to, answers in replies.items():
        answered = by_id.get(reply_to)
        if answered is None:
            found.append(Violation(REPLIES_WELL_FORMED, f"replies to {reply_to}, which is gone"))
        elif answered.reply_to:
            found.append(Violation(REPLIES_WELL_FORMED, f"a reply answers the reply {reply_to}"))
        for reply in answers:
            if reply.state != pb.MESSAGE_STATE_PROCESSED or reply.delivery_attempts:
                detail = (
                    f"reply {reply.id}: {_state(reply)} after {reply.delivery_attempts} "
                    "deliveries; replies are born PROCESSED and never delivered"
                )
                found.append(Violation(REPLIES_WELL_FORMED, detail))
            if reply.author not in personas:
                detail = f"reply {reply.id}: author {reply.author!r} is no bot's persona"
                found.append(Violation(REPLIES_WELL_FORMED, detail))
    return found
