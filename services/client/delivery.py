"""One delivery as a consumer holds it (`Delivery`, the Pub/Sub Message with its ack and nack),
and the default dispatch of a callback's answer (`dispatch`).

The application's callback gets a `Delivery`. It may settle it itself (`ack`, `release`), or
leave it to `dispatch`, which reads its answer: a text is stored as the reply (MarkProcessed,
cut to the store's limit), None marks it processed without one; `HandBack` gives it back
without spending an attempt; any other exception releases it with the exception as its reason
and a retry_after that grows with the attempt (after max_attempts the store makes it DEAD).

While a consumer shuts down on a StreamUnprocessed stream, a reply that is ready is held back
until the stream is closed: settling it at once would make room on the stream, and the store
would fill that room with a delivery the closing stream then counts as a wasted attempt. On a
Consume session the consumer has told the store to send nothing more (drain), so a ready reply
is settled at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ackbot.client.leaser import Leaser
from ackbot.client.outcomes import MESSAGE_DELETED, CallResult, Outcome
from ackbot.client.router import StoreClient
from ackbot.common.backoff import MAX_RELEASE_RETRY_AFTER_SECONDS, release_retry_after
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, MAX_REASON_CHARS, fit_text
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

# MarkProcessed carries work already done (an LLM call, maybe): worth retrying for a while even
# with a short lease, since it is keyed by id and needs no lease.
MIN_MARK_BUDGET_SECONDS = 30.0


class HandBack(Exception):
    """Raised by a callback: nothing is wrong with the message, give it back without spending
    an attempt (ReleaseMessage without a reason), to come back after `delay_seconds` (None: at
    once). A rate limit or a dependency that is down says this, so it never makes a message
    DEAD."""

    def __init__(self, detail: str = "", delay_seconds: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.delay_seconds = delay_seconds


@dataclass
class Shutdown:
    """The consumer's shutdown, as a delivery sees it."""

    # The consumer stopped taking work: replies that are ready wait for the stream to close.
    begun: bool = False
    # The store was told to send no more deliveries (Consume's drain): settling makes no room
    # that a new delivery would fill, so ready replies need not wait.
    drained: bool = False
    # The stream is closed (or gone): held replies may be stored now.
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def holds_settles(self) -> bool:
        return self.begun and not self.drained and not self.stream_closed.is_set()


def fit_reason(text: str) -> str:
    """A release reason within the store's rules."""
    return fit_text(text)[:MAX_REASON_CHARS]


def failure_reason(exc: BaseException) -> str:
    """The reason kept as the message's last error: type and text, within the store's rules."""
    return fit_reason(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class Delivery:
    """A delivery the consumer holds; after a redelivery joined it (`adopt`), the latest
    delivery of its message. Its lease is kept by the consumer's Leaser until it is settled or
    its callback is over."""

    def __init__(
        self,
        delivery: pb.Delivery,
        *,
        received_at: float,
        generation: int,
        store: StoreClient,
        leaser: Leaser,
        shutdown: Shutdown,
        lease_seconds: float,
        max_reply_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    ) -> None:
        self.delivery = delivery
        # On the consumer's clock: the lease is counted from here.
        self.received_at = received_at
        # Which stream brought it: when that stream breaks, the store has already taken the
        # lease back.
        self.generation = generation
        # The store client, for reads the callback makes (ListMessages) with the same failover.
        self.store = store
        # The longest reply the store of its stream accepts.
        self.max_reply_bytes = max_reply_bytes
        self._leaser = leaser
        self._shutdown = shutdown
        self._lease_seconds = lease_seconds
        # Set once the callback is done with it (settling or returned): what the shutdown grace
        # period awaits.
        self.replied = asyncio.Event()
        # Once it is handed back, a redelivery is a new attempt, not this one's.
        self.releasing = False
        # Whether ack or release was called (else dispatch settles by the callback's answer).
        self.settled = False
        self.task: asyncio.Task[None] | None = None
        self.started = False

    @property
    def message(self) -> pb.Message:
        return self.delivery.message

    @property
    def message_id(self) -> str:
        return self.delivery.message.id

    @property
    def attempt(self) -> int:
        return self.delivery.attempt

    @property
    def lease_token(self) -> str:
        return self.delivery.lease_token

    @property
    def joinable(self) -> bool:
        """Whether a redelivery of this message should join this one rather than start anew."""
        return not self.releasing and self.task is not None and not self.task.done()

    def adopt(self, delivery: pb.Delivery, received_at: float, generation: int) -> None:
        """A redelivery of the message joins this one: its lease is the one kept and settled
        from now on (MarkProcessed is keyed by id, so the running work answers it)."""
        self.delivery = delivery
        self.received_at = received_at
        self.generation = generation
        self._leaser.renewed(self)

    async def ack(
        self, reply: pb.Message | None = None, *, context_sequence: int = 0
    ) -> CallResult[pb.MarkProcessedResponse]:
        """MarkProcessed, with `reply` if any (the caller fits it to `max_reply_bytes`).
        SETTLED or ALREADY_PROCESSED with the response (its `reply` is the stored one);
        LEASE_GONE with reason CONTEXT_STALE when fenced by `context_sequence`; NOT_FOUND,
        REJECTED, FAILED or UNAVAILABLE otherwise."""
        self.settled = True
        self.replied.set()
        if self._shutdown.holds_settles():
            # The lease stays kept meanwhile: if another consumer got the message, the first
            # reply wins.
            log.debug(
                "reply ready; sending it once the stream is closed message_id=%s", self.message_id
            )
            await self._shutdown.stream_closed.wait()
        self._leaser.drop(self)
        return await self.store.mark_processed(
            self.message_id,
            self.lease_token,
            reply,
            budget_seconds=max(self._lease_seconds, MIN_MARK_BUDGET_SECONDS),
            context_sequence=context_sequence,
        )

    async def release(
        self, reason: str = "", *, retry_after_seconds: float = 0.0
    ) -> CallResult[pb.ReleaseMessageResponse]:
        """ReleaseMessage: with a `reason` (cut to the store's rules) the attempt counts and the
        reason is kept as the last error; without one the attempt is given back."""
        self.settled = True
        self.replied.set()
        # From here a redelivery is the next attempt: it must not join this one, which is done.
        self.releasing = True
        self._leaser.drop(self)
        result = await self.store.release(
            self.message_id,
            self.lease_token,
            reason=fit_reason(reason),
            retry_after_seconds=min(retry_after_seconds, MAX_RELEASE_RETRY_AFTER_SECONDS),
            budget_seconds=self._lease_seconds,
        )
        match result.outcome:
            case Outcome.SETTLED:
                pass
            case Outcome.LEASE_GONE:
                log.info("lease already moved on; dropped message_id=%s", self.message_id)
            case Outcome.NOT_FOUND if result.reason == MESSAGE_DELETED:
                log.info("message was deleted; dropped message_id=%s", self.message_id)
            case Outcome.NOT_FOUND:
                log.warning("message no longer exists; dropped message_id=%s", self.message_id)
            case _:
                log.error(
                    "ReleaseMessage failed (%s); the lease will expire instead message_id=%s",
                    result.problem,
                    self.message_id,
                )
        return result


# The application: given a delivery, a reply's text or None, or it settles the delivery itself.
Callback = Callable[[Delivery], Awaitable[str | None]]
# The name of a callback before the Consumer took the bot's place (it was given a pb.Delivery,
# whose `message` and `attempt` a Delivery has too).
Handler = Callback


async def dispatch(
    delivery: Delivery, callback: Callback, *, author: str, retry_base_seconds: float
) -> None:
    """Awaits `callback(delivery)` and settles by its answer unless it settled itself (see the
    module docstring)."""
    try:
        answer: Any = await callback(delivery)
        if answer is not None and not isinstance(answer, str):
            raise TypeError(f"the callback returned {type(answer).__name__}, expected str or None")
    except HandBack as busy:
        delivery.replied.set()
        if not delivery.settled:
            log.warning(
                "handing the message back, attempt not counted (%s) message_id=%s",
                busy.detail,
                delivery.message_id,
            )
            await delivery.release("", retry_after_seconds=busy.delay_seconds or 0.0)
        return
    except Exception as exc:
        delivery.replied.set()
        if not delivery.settled:
            retry_after = release_retry_after(delivery.attempt, retry_base_seconds)
            log.warning(
                "callback failed on attempt %d (%s); releasing, retry after %.1fs message_id=%s",
                delivery.attempt,
                failure_reason(exc),
                retry_after,
                delivery.message_id,
            )
            await delivery.release(failure_reason(exc), retry_after_seconds=retry_after)
        return
    delivery.replied.set()
    if delivery.settled:
        return
    reply = None
    if answer:
        reply = pb.Message(author=author, text=fit_text(answer, delivery.max_reply_bytes))
    result = await delivery.ack(reply)
    if result.outcome not in (Outcome.SETTLED, Outcome.ALREADY_PROCESSED):
        log.warning(
            "could not mark processed (%s) message_id=%s", result.problem, delivery.message_id
        )
