"""What the producers create, and how: a seeded plan of messages, and producers that create them
on schedule and retry a create whose answer was lost, as a real client does."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from ackbot.client.channels import open_channel
from ackbot.client.outcomes import is_retryable
from ackbot.common.backoff import CALL_BACKOFF
from ackbot.testing.responders import FAIL_MARKER
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .responder import SLOW_MARKER

log = logging.getLogger(__name__)

CREATE_TIMEOUT_SECONDS = 5.0
_PHRASES = (
    "Hello",
    "hi there",
    "Good morning!",
    "How do I reset my password?",
    "Is the build green?",
    "thanks 🙏",
    "Grüße aus Köln",
    "line one\nline two",
    "👋 hey",
    "what's the plan for today",
)


@dataclass(frozen=True)
class PlannedMessage:
    id: str
    author: str
    text: str
    # Seconds after the start of production when it is due to be created.
    due: float
    # The responder raises on it (its text carries FAIL_MARKER): it must end DEAD.
    must_fail: bool
    # The responder takes long enough on it that the bot must extend the lease (SLOW_MARKER).
    slow: bool = False


def make_plan(
    seed: int,
    count: int,
    producers: int,
    spread_seconds: float,
    fail_fraction: float,
    slow_fraction: float = 0.0,
) -> list[PlannedMessage]:
    """The same seed always gives the same messages, authors and schedule."""
    rng = random.Random(f"{seed}:plan")
    plan = []
    for index in range(count):
        draw = rng.random()
        must_fail = draw < fail_fraction
        slow = not must_fail and draw < fail_fraction + slow_fraction
        text = f"{rng.choice(_PHRASES)} #{index}"
        if must_fail:
            text = f"{text} {FAIL_MARKER}"
        if slow:
            text = f"{text} {SLOW_MARKER}"
        plan.append(
            PlannedMessage(
                id=f"chaos-{seed}-{index:06d}",
                author=f"producer-{index % producers}",
                text=text,
                due=spread_seconds * index / count,
                must_fail=must_fail,
                slow=slow,
            )
        )
    return plan


@dataclass
class CreateLedger:
    """What the producers were told: the ground truth the checker compares the store with."""

    acknowledged: set[str] = field(default_factory=set)
    # Creates answered OK with already_existed: a retry of a create whose first answer was lost.
    already_existed: set[str] = field(default_factory=set)
    retries: Counter[str] = field(default_factory=Counter)  # by status code name
    # Answers no retry can fix (e.g. ALREADY_EXISTS for our own content): contract violations.
    failures: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)


class Producers:
    """`count` concurrent clients sharing the plan round-robin, on one channel each; with several
    targets (stores of one database), producer N creates through target N mod len(targets)."""

    def __init__(
        self,
        target: str | Sequence[str],
        plan: Sequence[PlannedMessage],
        count: int,
        give_up_after: float,
    ) -> None:
        self._targets = [target] if isinstance(target, str) else list(target)
        self._plan = plan
        self._count = count
        self._give_up_after = give_up_after
        self.ledger = CreateLedger()

    async def run(self) -> CreateLedger:
        started = time.monotonic()
        await asyncio.gather(*(self._producer(number, started) for number in range(self._count)))
        return self.ledger

    async def _producer(self, number: int, started: float) -> None:
        # Created here, inside the running loop: a grpc.aio channel is bound to its loop. The
        # bot's channel settings, so producers reconnect to a restarted store as fast as bots.
        async with open_channel(self._targets[number % len(self._targets)]) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            jitter = random.Random(number)  # timing only: what is created stays seeded
            for planned in self._plan[number :: self._count]:
                delay = started + planned.due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the plan's schedule, not a wait for a condition
                await self._create(stub, planned, started, jitter)

    async def _create(
        self,
        stub: pb_grpc.MessageStoreStub,
        planned: PlannedMessage,
        started: float,
        jitter: random.Random,
    ) -> None:
        request = pb.CreateMessageRequest(
            message=pb.Message(id=planned.id, author=planned.author, text=planned.text)
        )
        request.message.create_time.GetCurrentTime()
        retry = 0
        while True:
            try:
                response = await stub.CreateMessage(request, timeout=CREATE_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as exc:
                if not is_retryable(exc):
                    self.ledger.failures.append(f"create {planned.id}: {exc.code().name}")
                    return
                if time.monotonic() - started > self._give_up_after:
                    self.ledger.gave_up.append(planned.id)
                    return
                self.ledger.retries[exc.code().name] += 1
                await asyncio.sleep(CALL_BACKOFF.delay(retry, jitter.random))
                retry += 1
                continue
            self.ledger.acknowledged.add(planned.id)
            if response.already_existed:
                if retry == 0:
                    # Fresh ids in a fresh database: nobody created it before this call.
                    self.ledger.failures.append(f"create {planned.id}: already existed at once")
                self.ledger.already_existed.add(planned.id)
            return
