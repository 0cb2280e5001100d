"""Retry and failover: the one rule for every call a consumer makes (the stream's reconnects
are in consumer.py and follow the same order).

The rule. A consumer is given one store, or several stores of one database in failover order.
A call (a settle, an ExtendLease, a read) goes first to the store whose stream opened last (a
settle there also frees the delivery's slot on that stream, and that store was reachable a
moment ago), then on UNAVAILABLE or DEADLINE_EXCEEDED on to the next store at once, wrapping
round, since any store of the database can settle any message. Only a round in which every
store failed is followed by a backoff pause (exponential, full jitter), until the call's budget
is spent. Any other code ends the call at once: retrying cannot fix it. The stream follows the
same order: when it breaks it is opened again on the next store of the list, after a reconnect
backoff that grows across stores, so a dead store costs one failed attempt per round.

Every settling RPC is safe to repeat (the proto says so): MarkProcessed is idempotent on the
id, ReleaseMessage and ExtendLease on the lease token.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from ackbot.client.outcomes import CallResult, Outcome, failed, is_retryable
from ackbot.common.backoff import CALL_BACKOFF, Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

# One call to one store, given the seconds it may take; for logs, the store's address with it.
Call = Callable[[float], Awaitable[T]]
Target = tuple[str, Call[T]]

# Per attempt: a store that has not answered in this long is treated as unreachable.
CALL_TIMEOUT_SECONDS = 10.0
# A last attempt still gets this long, so a nearly spent budget does not doom it by timeout.
MIN_CALL_TIMEOUT_SECONDS = 1.0


async def call_with_failover(
    targets: Sequence[Target[T]],
    *,
    what: str,
    message_id: str,
    budget_seconds: float,
    backoff: Backoff = CALL_BACKOFF,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Runs each target's `call(timeout)`, from the first on, until one succeeds, one fails with a
    code that retrying cannot fix, or the budget is spent; then the last error propagates.

    A retryable failure goes on to the next target at once; only a round in which every target
    failed is followed by a backoff pause. So a dead store costs one fast failure per round, and
    with a single target this is plain retrying with backoff.
    """
    if not targets:
        raise ValueError("no store to call")
    deadline = clock() + budget_seconds
    tried = 0
    pauses = 0
    while True:
        name, call = targets[tried % len(targets)]
        timeout = max(min(CALL_TIMEOUT_SECONDS, deadline - clock()), MIN_CALL_TIMEOUT_SECONDS)
        try:
            return await call(timeout)
        except grpc.aio.AioRpcError as exc:
            if not is_retryable(exc):
                raise
            tried += 1
            if tried % len(targets):
                if clock() >= deadline:
                    raise
                log.warning(
                    "%s failed on %s (%s), trying %s message_id=%s",
                    what,
                    name,
                    exc.code().name,
                    targets[tried % len(targets)][0],
                    message_id,
                )
                continue
            pause = backoff.delay(pauses, rand)
            pauses += 1
            if clock() + pause >= deadline:
                raise
            log.warning(
                "%s failed on %s (%s), retry %d on %s in %.2fs message_id=%s",
                what,
                name,
                exc.code().name,
                pauses,
                targets[0][0],
                pause,
                message_id,
            )
            await sleep(pause)


async def call_for_outcome(
    targets: Sequence[Target[T]], *, what: str, message_id: str, budget_seconds: float
) -> CallResult[T]:
    """`call_with_failover`, with the error that ended it turned into an outcome."""
    try:
        response = await call_with_failover(
            targets, what=what, message_id=message_id, budget_seconds=budget_seconds
        )
    except grpc.aio.AioRpcError as exc:
        return failed(exc)
    return CallResult(Outcome.SETTLED, response)
