"""One delivery, from the responder to the store: ask the responder, keep the lease alive
meanwhile, and settle.

While the responder runs, a lease keeper extends the lease every half lease. The outcome settles
the delivery: MarkProcessed with the reply (cut to the store's reply limit), or without one when
the responder chose silence; ReleaseMessage with the reason and a growing retry_after when the
responder failed or the store rejected its reply; ReleaseMessage without a reason (the attempt
given back) after the server's delay when the responder's backend said "busy" (RetryLater). What
each responder answer and each store outcome means is decided in this module, from the outcomes
the store client reports (it handles no gRPC errors itself).

A message may be delivered again while its reply is still being written: the store restarted,
or the stream broke and came back, and handed out the message anew. The worker then lets the new
delivery join the running job (`Job.adopt`) instead of asking the responder a second time: the
job keeps and settles the new lease. A job whose lease is lost waits a while for such a
redelivery before it gives up its reply.

While the worker shuts down on a StreamUnprocessed stream, a reply that is ready is held back
until the stream is closed (the whole shutdown order is in worker.py): settling it at once would
make room on the stream, and the store would fill that room with a delivery the closing stream
then counts as a wasted attempt. On a Consume session the worker has told the store to send
nothing more (drain), so a ready reply is settled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from ackbot.bot import metrics as bot_metrics
from ackbot.bot.config import BotConfig
from ackbot.bot.metrics import BotMetrics
from ackbot.bot.responder import IncomingMessage, Responder, RetryLater, Turn
from ackbot.bot.store_client import CallResult, Outcome, StoreClient
from ackbot.common.backoff import MAX_RELEASE_RETRY_AFTER_SECONDS, release_retry_after
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, MAX_REASON_CHARS, fit_text
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

# MarkProcessed carries a reply that may have cost an LLM call: worth retrying for a while even
# with a short lease, since it is keyed by id and needs no lease.
MIN_MARK_BUDGET_SECONDS = 30.0
# What ExtendLease outcomes mean the lease is lost. UNAVAILABLE here means the retries already
# ran until the lease expired.
_LEASE_LOST = frozenset({Outcome.LEASE_GONE, Outcome.NOT_FOUND, Outcome.UNAVAILABLE})
# A reply whose lease is lost goes on this long (or a lease, if longer) in case the message is
# delivered to this bot again, as it is after a store restart: the bot's reconnect backoff tops
# out at 5 s, and a store takes a few seconds to start.
MIN_REDELIVERY_WAIT_SECONDS = 10.0
# The first delay after a "busy" answer that named none; it doubles while the backend stays busy.
# A floor, not --retry-base-seconds alone: a base of 0 would hammer a rate-limited server.
MIN_BUSY_RETRY_SECONDS = 0.5
# The ErrorInfo reason of a MarkProcessed fenced by its context_sequence.
CONTEXT_STALE = "CONTEXT_STALE"
# A conversation is read newest first, a page at a time, down to the turns before the message:
# messages that came after it (held back until it is settled) cost pages too, so the pages are
# a little larger than the turns wanted, and there are at most this many.
MAX_CONTEXT_PAGES = 5
CONTEXT_PAGE_SLACK = 20
MAX_PAGE_SIZE = 1000
# Reading the context is worth a short wait, not the lease: without it the reply goes on alone.
CONTEXT_READ_BUDGET_SECONDS = 5.0


@dataclass(eq=False)
class Job:
    """One delivery as the bot holds it; after `adopt`, the latest delivery of its message."""

    delivery: pb.Delivery
    # On the bot's clock: the lease is counted from here (the store's expiry is on its clock).
    received_at: float
    # Set once the responder is done with it (or gave up): what the shutdown grace period awaits.
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    # Set whenever a redelivery joins the job: the lease keeper moves on to the new lease.
    lease_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Once the job hands its message back, a redelivery is a new attempt, not this one's.
    releasing: bool = False
    # Set when the reply was written from the conversation (the context the bot read).
    conversation: ConversationRead | None = None

    @property
    def message_id(self) -> str:
        return self.delivery.message.id

    @property
    def joinable(self) -> bool:
        """Whether a redelivery of this message should join this job rather than start anew."""
        return not self.releasing

    def adopt(self, delivery: pb.Delivery, received_at: float) -> None:
        """A redelivery of the message joins this job: its lease is the one kept and settled
        from now on (MarkProcessed is keyed by id, so the running reply answers it)."""
        self.delivery = delivery
        self.received_at = received_at
        self.lease_changed.set()


@dataclass(frozen=True)
class ConversationRead:
    """Where the message's conversation stood when the bot read it for the reply."""

    # The newest sequence in it, replies included: MarkProcessed's context_sequence.
    newest_sequence: int
    # The newest original that came after the message, if any: it supersedes the message.
    newer_original_id: str = ""


class Superseded(Exception):
    """A newer original of the conversation overtook the message (--on-stale supersede)."""

    def __init__(self, newest_message_id: str) -> None:
        super().__init__(f"superseded by message {newest_message_id}")
        self.newest_message_id = newest_message_id


@dataclass
class Shutdown:
    """The worker's shutdown, as a delivery sees it."""

    # The worker stopped taking work: replies that are ready wait for the stream to close.
    begun: bool = False
    # The store was told to send no more deliveries (Consume's drain): settling makes no room
    # that a new delivery would fill, so ready replies need not wait.
    drained: bool = False
    # The stream is closed (or gone): held replies may be stored now.
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)


def to_incoming(delivery: pb.Delivery) -> IncomingMessage:
    message = delivery.message
    create_time: datetime | None = None
    if message.HasField("create_time"):
        with contextlib.suppress(ValueError, OverflowError):
            create_time = message.create_time.ToDatetime(tzinfo=UTC)
    return IncomingMessage(
        id=message.id,
        author=message.author,
        text=message.text,
        attempt=delivery.attempt,
        create_time=create_time,
        conversation_id=message.conversation_id or None,
    )


def trim_turns(
    newest_first: Sequence[pb.Message], persona: str, *, turns: int, chars: int
) -> tuple[Turn, ...]:
    """The newest of `newest_first` that fit `turns` and `chars` (counting texts), oldest first.
    A reply written under `persona` is the bot's own turn."""
    kept: list[Turn] = []
    used = 0
    for message in newest_first:
        if len(kept) >= turns or used + len(message.text) > chars:
            break
        used += len(message.text)
        mine = bool(message.reply_to) and message.author == persona
        kept.append(Turn(author=message.author, text=message.text, mine=mine))
    return tuple(reversed(kept))


def _where_it_stood(message: pb.Message, newest_first: Sequence[pb.Message]) -> ConversationRead:
    """From the first page of the conversation, newest first: its newest sequence (or the
    message's, if the page is somehow empty), and the newest original after the message."""
    newest = max([message.sequence, *(m.sequence for m in newest_first[:1])])
    newer = next(
        (m.id for m in newest_first if m.sequence > message.sequence and not m.reply_to), ""
    )
    return ConversationRead(newest, newer)


def fit_reason(text: str) -> str:
    """A release reason within the store's rules."""
    return fit_text(text)[:MAX_REASON_CHARS]


def failure_reason(exc: BaseException) -> str:
    """The reason kept as the message's last error: type and text, within the store's rules."""
    return fit_reason(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class DeliveryHandler:
    """Answers deliveries, one `handle(job)` each; shared by all of a worker's deliveries.

    `max_reply_bytes` is the store's reply limit; the worker updates it from each stream's headers.
    """

    def __init__(
        self,
        client: StoreClient,
        responder: Responder,
        config: BotConfig,
        *,
        shutdown: Shutdown,
        clock: Callable[[], float] = time.monotonic,
        metrics: BotMetrics | None = None,
    ) -> None:
        # A registry of its own when none is given (unit tests), so the counting needs no ifs.
        self._metrics = metrics or BotMetrics()
        self._client = client
        self._responder = responder
        self._config = config
        self._shutdown = shutdown
        self._clock = clock
        self.max_reply_bytes = DEFAULT_MAX_TEXT_BYTES
        # Busy answers in a row, across messages: a rate limit is the backend's, not a message's,
        # and a hand-back gives the attempt back, so the message's attempt cannot count them.
        self._busy_in_a_row = 0

    async def handle(self, job: Job) -> None:
        """Asks the responder while keeping the lease, then settles the delivery."""
        work = asyncio.create_task(self._answer(job))
        keeper = asyncio.create_task(self.keep_lease(job))
        try:
            await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # The keeper returns only when the lease is lost: another bot may be answering
                # by now, and this answer would be the second.
                log.warning("abandoning the reply: lease lost message_id=%s", job.message_id)
                self._metrics.reply(bot_metrics.LEASE_LOST)
                self._metrics.failure(bot_metrics.LEASE_LOST)
                return
            job.replied.set()
            succeeded = not work.cancelled() and work.exception() is None
            shutdown = self._shutdown
            if (
                succeeded
                and shutdown.begun
                and not shutdown.drained
                and not shutdown.stream_closed.is_set()
            ):
                # Settling now would make room on the stream, and the store would fill it with
                # a delivery that the closing stream then counts as a wasted attempt. The reply
                # waits (its lease still kept) until the stream is closed: MarkProcessed needs
                # no lease, and if another bot got the message meanwhile, the first reply wins.
                log.debug(
                    "reply ready; sending it once the stream is closed message_id=%s",
                    job.message_id,
                )
                await shutdown.stream_closed.wait()
        finally:
            job.replied.set()
            pending = [task for task in (work, keeper) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if work.cancelled():
            error = asyncio.CancelledError("the responder was cancelled")
            self._metrics.reply(bot_metrics.FAILED)
            self._metrics.failure(bot_metrics.RESPONDER_CANCELLED)
            await self._release_failed(job, failure_reason(error), error)
            return
        exc = work.exception()
        if isinstance(exc, Superseded):
            await self._supersede(job, exc.newest_message_id)
            return
        if isinstance(exc, RetryLater):
            self._metrics.reply(bot_metrics.RATE_LIMITED)
            await self._hand_back_busy(job, exc)
            return
        self._busy_in_a_row = 0
        if exc is not None:
            self._metrics.reply(bot_metrics.FAILED)
            self._metrics.failure(bot_metrics.RESPONDER_ERROR)
            await self._release_failed(job, failure_reason(exc), exc)
            return
        await self._mark(job, work.result())

    async def _answer(self, job: Job) -> str | None:
        """Asks the responder, with the conversation's earlier turns when it wants them."""
        message = to_incoming(job.delivery)
        turns = getattr(self._responder, "context_turns", 0)
        if message.conversation_id is not None and isinstance(turns, int) and turns > 0:
            chars = getattr(self._responder, "context_chars", 0)
            context = await self._read_context(job, turns, chars if isinstance(chars, int) else 0)
            message = replace(message, context=context)
            overtaken = job.conversation.newer_original_id if job.conversation else ""
            if overtaken and self._config.on_stale == "supersede":
                # The newest message will be answered with this one in its context: asking
                # the model here would cost a call whose reply the store would refuse.
                raise Superseded(overtaken)
        return await self._ask(message)

    async def _read_context(self, job: Job, turns: int, chars: int) -> tuple[Turn, ...]:
        """The turns of the message's conversation before it, newest first from the store,
        within the responder's budget; none when the store cannot say."""
        message = job.delivery.message
        request = pb.ListMessagesRequest(
            conversation_id=message.conversation_id,
            order_by="sequence desc",
            page_size=min(turns + CONTEXT_PAGE_SLACK, MAX_PAGE_SIZE),
        )
        earlier: list[pb.Message] = []
        for _ in range(MAX_CONTEXT_PAGES):
            result = await self._client.list_messages(
                request, message_id=message.id, budget_seconds=CONTEXT_READ_BUDGET_SECONDS
            )
            if result.response is None:
                log.warning(
                    "answering without the conversation: reading it failed (%s) message_id=%s",
                    result.problem,
                    message.id,
                )
                break
            if job.conversation is None:
                job.conversation = _where_it_stood(message, result.response.messages)
            earlier += [m for m in result.response.messages if m.sequence < message.sequence]
            if len(earlier) >= turns or not result.response.next_page_token:
                break
            request.page_token = result.response.next_page_token
        context = trim_turns(earlier, self._config.persona, turns=turns, chars=chars)
        log.debug("%d earlier turns for the model message_id=%s", len(context), message.id)
        return context

    async def _ask(self, message: IncomingMessage) -> str | None:
        began = time.perf_counter()
        try:
            result: object = self._responder.reply(message)
            if inspect.isawaitable(result):
                result = await result
        finally:
            self._metrics.responder_seconds.observe(time.perf_counter() - began)
        if result is not None and not isinstance(result, str):
            raise TypeError(f"reply() returned {type(result).__name__}, expected str or None")
        return result

    async def keep_lease(self, job: Job) -> None:
        """Extends the lease every half lease, moving on to the lease of any redelivery that
        joins the job; returns only when the lease is lost and no redelivery came in time."""
        lease = self._config.lease_seconds
        token = ""
        expires = 0.0
        while True:
            if job.delivery.lease_token != token:
                # The first lease, or a redelivery's: counted from receipt, on our own clock
                # (the store's expiry time is on its clock).
                token = job.delivery.lease_token
                expires = job.received_at + lease
            await asyncio.sleep(max(0.0, expires - lease / 2 - self._clock()))
            if job.delivery.lease_token != token:
                continue
            sent = self._clock()
            result = await self._client.extend(
                job.message_id,
                token,
                lease_seconds=lease,
                budget_seconds=max(expires - sent, 0.0),
            )
            if job.delivery.lease_token != token:
                continue  # joined meanwhile: the new lease is the one to keep
            if result.outcome is Outcome.SETTLED:
                expires = sent + lease
                log.debug("lease extended by %gs message_id=%s", lease, job.message_id)
                continue
            remaining = expires - self._clock()
            if result.outcome in _LEASE_LOST or remaining < 0.1:
                if await self._redelivered(job, token, result.problem):
                    continue
                log.warning("lease lost (%s) message_id=%s", result.problem, job.message_id)
                return
            log.warning(
                "ExtendLease failed (%s); trying again message_id=%s",
                result.problem,
                job.message_id,
            )
            await asyncio.sleep(min(1.0, remaining / 2))

    async def _redelivered(self, job: Job, token: str, problem: str) -> bool:
        """Waits for a redelivery to join the job after its lease `token` was lost; False when
        none came in time. A store that restarted hands the message out again, most likely to
        this bot; until then the reply goes on, so it is not paid for twice."""
        wait = max(self._config.lease_seconds, MIN_REDELIVERY_WAIT_SECONDS)
        if job.delivery.lease_token == token:
            log.info(
                "lease lost (%s); the reply goes on for up to %gs in case the message comes "
                "back message_id=%s",
                problem,
                wait,
                job.message_id,
            )
        deadline = self._clock() + wait
        while job.delivery.lease_token == token:
            # Cleared only after the check above, with no await between: an adoption is never
            # missed.
            job.lease_changed.clear()
            try:
                await asyncio.wait_for(job.lease_changed.wait(), deadline - self._clock())
            except TimeoutError:
                return False
        return True

    async def _mark(self, job: Job, text: str | None) -> None:
        message_id = job.message_id
        reply_text = fit_text(text, self.max_reply_bytes) if text else ""
        if text and reply_text != text:
            log.warning(
                "reply cut to the store's limits (%d -> %d bytes) message_id=%s",
                len(text.encode("utf-8", errors="surrogatepass")),
                len(reply_text.encode("utf-8")),
                message_id,
            )
        reply = pb.Message(author=self._config.persona, text=reply_text) if reply_text else None
        fence = job.conversation.newest_sequence if job.conversation is not None else 0
        if self._config.on_stale != "supersede":
            fence = 0  # answer-each: the reply stands whatever came meanwhile
        result = await self._client.mark_processed(
            message_id,
            job.delivery.lease_token,
            reply,
            budget_seconds=max(self._config.lease_seconds, MIN_MARK_BUDGET_SECONDS),
            context_sequence=fence,
        )
        if result.reason == CONTEXT_STALE:
            # Newer messages came while the model wrote: the newest is answered with them all.
            await self._supersede(job, result.metadata.get("newest_message_id", "?"))
            return
        await self._settled(job, result, text, reply)

    async def _supersede(self, job: Job, newest_message_id: str) -> None:
        """Marks the message processed without a reply: a newer one of its conversation will
        be answered with it in context. The log line names the one that superseded it."""
        result = await self._client.mark_processed(
            job.message_id,
            job.delivery.lease_token,
            None,
            budget_seconds=max(self._config.lease_seconds, MIN_MARK_BUDGET_SECONDS),
        )
        if result.outcome is Outcome.SETTLED:
            self._metrics.reply(bot_metrics.SUPERSEDED)
            log.info(
                "superseded by newest_message_id=%s: processed without a reply message_id=%s",
                newest_message_id,
                job.message_id,
            )
            return
        await self._settled(job, result, None, None)

    async def _settled(
        self,
        job: Job,
        result: CallResult[pb.MarkProcessedResponse],
        text: str | None,
        reply: pb.Message | None,
    ) -> None:
        """Counts and logs what became of a MarkProcessed, and acts on a refusal."""
        message_id = job.message_id
        stored = result.response.reply.id if result.response is not None else ""
        match result.outcome:
            case Outcome.ALREADY_PROCESSED:
                self._metrics.reply(bot_metrics.DUPLICATE)
                log.info(
                    "duplicate prevented: already answered (reply_id=%s) message_id=%s",
                    stored or "-",
                    message_id,
                )
            case Outcome.SETTLED if reply is None:
                self._metrics.reply(bot_metrics.SILENT if text is None else bot_metrics.EMPTY)
                log.debug("processed without a reply message_id=%s", message_id)
            case Outcome.SETTLED:
                self._metrics.reply(bot_metrics.ANSWERED)
                log.debug(
                    "answered attempt=%d reply_id=%s message_id=%s",
                    job.delivery.attempt,
                    stored,
                    message_id,
                )
            case Outcome.NOT_FOUND:
                self._metrics.reply(bot_metrics.GONE)
                log.warning("message no longer exists; dropped message_id=%s", message_id)
            case Outcome.REJECTED:
                self._metrics.reply(bot_metrics.FAILED)
                self._metrics.failure(bot_metrics.STORE_REJECTED)
                # Retrying the same reply cannot help; releasing with the reason lets the
                # message go DEAD after max_attempts instead of looping.
                log.error(
                    "the store rejected the reply (%s) message_id=%s", result.details, message_id
                )
                await self._release_failed(
                    job, fit_reason(f"store rejected the reply: {result.problem}")
                )
            case _:
                self._metrics.reply(bot_metrics.FAILED)
                self._metrics.failure(bot_metrics.MARK_FAILED)
                log.error(
                    "MarkProcessed failed (%s); the message will be delivered again message_id=%s",
                    result.problem,
                    message_id,
                )

    async def _hand_back_busy(self, job: Job, busy: RetryLater) -> None:
        """The backend is busy or rate limited: gives the message back without a reason, which
        gives the attempt back (so a rate limit never makes a message DEAD), to come back after
        the server's delay, or a backoff that grows while the backend stays busy."""
        if busy.delay_seconds is not None:
            delay = busy.delay_seconds
        else:
            base = max(self._config.retry_base_seconds, MIN_BUSY_RETRY_SECONDS)
            delay = release_retry_after(self._busy_in_a_row + 1, base)
        self._busy_in_a_row += 1
        delay = min(delay, MAX_RELEASE_RETRY_AFTER_SECONDS)
        log.warning(
            "the model server is busy (%s); handing the message back, attempt not counted, "
            "retry after %.1fs message_id=%s",
            busy.detail,
            delay,
            job.message_id,
        )
        await self._release(job, reason="", retry_after=delay)

    async def _release_failed(
        self, job: Job, reason: str, exc: BaseException | None = None
    ) -> None:
        """Gives the message back with `reason` as its last error, to be retried after a delay
        that grows with the attempt."""
        message_id = job.message_id
        retry_after = release_retry_after(job.delivery.attempt, self._config.retry_base_seconds)
        log.warning(
            "reply failed on attempt %d (%s); releasing, retry after %.1fs message_id=%s",
            job.delivery.attempt,
            reason,
            retry_after,
            message_id,
        )
        if exc is not None:
            log.debug("responder traceback message_id=%s", message_id, exc_info=exc)
        await self._release(job, reason=reason, retry_after=retry_after)

    async def _release(self, job: Job, *, reason: str, retry_after: float) -> None:
        message_id = job.message_id
        # From here a redelivery is the next attempt: it must not join this job, which is done.
        job.releasing = True
        result = await self._client.release(
            message_id,
            job.delivery.lease_token,
            reason=reason,
            retry_after_seconds=retry_after,
            budget_seconds=self._config.lease_seconds,
        )
        match result.outcome:
            case Outcome.SETTLED:
                pass
            case Outcome.LEASE_GONE:
                log.info("lease already moved on; dropped message_id=%s", message_id)
            case Outcome.NOT_FOUND:
                log.warning("message no longer exists; dropped message_id=%s", message_id)
            case _:
                log.error(
                    "ReleaseMessage failed (%s); the lease will expire instead message_id=%s",
                    result.problem,
                    message_id,
                )
