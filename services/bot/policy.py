"""The bot as an application of ackbot.client's Consumer: what it does with a delivery, and
what each answer and each store outcome means. The stream, the slots, the leases, joining a
running reply, failover and the shutdown drain are the library's (ackbot.client.consumer).

Per delivery (`Answerer`): read the conversation's earlier turns when the responder wants them;
when a newer original came after the message and --on-stale is supersede, mark the message
processed without asking the model (the newest will be answered with it in context); else ask
the responder, cut its reply to the store's limit and store it with MarkProcessed, fenced by the
conversation's newest sequence (supersede) so a reply overtaken while the model wrote is refused
(CONTEXT_STALE) and the message superseded instead. A responder that failed gets the message
released with the reason and a growing retry_after; one whose backend said "busy" (RetryLater)
gets it handed back without a reason (the attempt given back) after the server's delay, or a
backoff that grows while the backend stays busy. Every outcome is counted (metrics.py) and logged
with the message id.

`Worker` is the library's Consumer set up from the bot's config with the Answerer as its callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ackbot.bot import metrics as bot_metrics
from ackbot.bot.config import BotConfig
from ackbot.bot.metrics import BotMetrics
from ackbot.bot.responder import DependencyDown, IncomingMessage, Responder, RetryLater, Turn
from ackbot.client.channels import Stores
from ackbot.client.consumer import ConnectionCallback, Consumer, ConsumerSettings
from ackbot.client.delivery import Delivery, failure_reason, fit_reason
from ackbot.client.outcomes import MESSAGE_DELETED, CallResult, Outcome
from ackbot.common.backoff import MAX_RELEASE_RETRY_AFTER_SECONDS, release_retry_after
from ackbot.common.limits import fit_text
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)

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


class Answerer:
    """The Consumer's callback: answers one delivery and settles it (see the module
    docstring). Shared by all of a worker's deliveries."""

    def __init__(
        self, responder: Responder, config: BotConfig, *, metrics: BotMetrics | None = None
    ) -> None:
        # A registry of its own when none is given (unit tests), so the counting needs no ifs.
        self._metrics = metrics or BotMetrics()
        self._responder = responder
        self._config = config
        # Busy answers in a row, across messages: a rate limit is the backend's, not a message's,
        # and a hand-back gives the attempt back, so the message's attempt cannot count them.
        self._busy_in_a_row = 0

    async def __call__(self, delivery: Delivery) -> None:
        conversation: list[ConversationRead] = []
        try:
            text = await self._answer(delivery, conversation)
        except Superseded as exc:
            await self._supersede(delivery, exc.newest_message_id)
            return
        except DependencyDown as down:
            # Before RetryLater, whose kind it is: the model (or the responder's dependency) is
            # down, not busy, so the busy backoff is left as it was.
            self._metrics.reply(bot_metrics.DEPENDENCY_DOWN)
            await self._hand_back_down(delivery, down)
            return
        except RetryLater as busy:
            self._metrics.reply(bot_metrics.RATE_LIMITED)
            await self._hand_back_busy(delivery, busy)
            return
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the consumer's: shutdown, or the lease lost
            # The responder's own: a failure like any other.
            self._busy_in_a_row = 0
            self._metrics.reply(bot_metrics.FAILED)
            self._metrics.failure(bot_metrics.RESPONDER_CANCELLED)
            error = asyncio.CancelledError("the responder was cancelled")
            await self._release_failed(delivery, failure_reason(error), exc)
            return
        except Exception as exc:
            self._busy_in_a_row = 0
            self._metrics.reply(bot_metrics.FAILED)
            self._metrics.failure(bot_metrics.RESPONDER_ERROR)
            await self._release_failed(delivery, failure_reason(exc), exc)
            return
        self._busy_in_a_row = 0
        await self._mark(delivery, text, conversation[0] if conversation else None)

    def lease_lost(self, delivery: Delivery) -> None:
        """The Consumer abandoned the reply: its lease was lost."""
        self._metrics.reply(bot_metrics.LEASE_LOST)
        self._metrics.failure(bot_metrics.LEASE_LOST)

    async def _answer(self, delivery: Delivery, conversation: list[ConversationRead]) -> str | None:
        """Asks the responder, with the conversation's earlier turns when it wants them."""
        message = to_incoming(delivery.delivery)
        turns = getattr(self._responder, "context_turns", 0)
        if message.conversation_id is not None and isinstance(turns, int) and turns > 0:
            chars = getattr(self._responder, "context_chars", 0)
            context = await self._read_context(
                delivery, conversation, turns, chars if isinstance(chars, int) else 0
            )
            message = replace(message, context=context)
            overtaken = conversation[0].newer_original_id if conversation else ""
            if overtaken and self._config.on_stale == "supersede":
                # The newest message will be answered with this one in its context: asking
                # the model here would cost a call whose reply the store would refuse.
                raise Superseded(overtaken)
        return await self._ask(message)

    async def _read_context(
        self, delivery: Delivery, conversation: list[ConversationRead], turns: int, chars: int
    ) -> tuple[Turn, ...]:
        """The turns of the message's conversation before it, newest first from the store,
        within the responder's budget; none when the store cannot say."""
        message = delivery.message
        request = pb.ListMessagesRequest(
            conversation_id=message.conversation_id,
            order_by="sequence desc",
            page_size=min(turns + CONTEXT_PAGE_SLACK, MAX_PAGE_SIZE),
        )
        earlier: list[pb.Message] = []
        for _ in range(MAX_CONTEXT_PAGES):
            result = await delivery.store.list_messages(
                request, message_id=message.id, budget_seconds=CONTEXT_READ_BUDGET_SECONDS
            )
            if result.response is None:
                log.warning(
                    "answering without the conversation: reading it failed (%s) message_id=%s",
                    result.problem,
                    message.id,
                )
                break
            # A HELD message is not part of the conversation until approved: it neither
            # supersedes this one nor goes into the model's context unmoderated.
            listed = [m for m in result.response.messages if m.state != pb.MESSAGE_STATE_HELD]
            if not conversation:
                conversation.append(_where_it_stood(message, listed))
            earlier += [m for m in listed if m.sequence < message.sequence]
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

    async def _mark(
        self, delivery: Delivery, text: str | None, conversation: ConversationRead | None
    ) -> None:
        message_id = delivery.message_id
        reply_text = fit_text(text, delivery.max_reply_bytes) if text else ""
        if text and reply_text != text:
            log.warning(
                "reply cut to the store's limits (%d -> %d bytes) message_id=%s",
                len(text.encode("utf-8", errors="surrogatepass")),
                len(reply_text.encode("utf-8")),
                message_id,
            )
        reply = pb.Message(author=self._config.persona, text=reply_text) if reply_text else None
        fence = conversation.newest_sequence if conversation is not None else 0
        if self._config.on_stale != "supersede":
            fence = 0  # answer-each: the reply stands whatever came meanwhile
        result = await delivery.ack(reply, context_sequence=fence)
        if result.reason == CONTEXT_STALE:
            # Newer messages came while the model wrote: the newest is answered with them all.
            await self._supersede(delivery, result.metadata.get("newest_message_id", "?"))
            return
        await self._settled(delivery, result, text, reply)

    async def _supersede(self, delivery: Delivery, newest_message_id: str) -> None:
        """Marks the message processed without a reply: a newer one of its conversation will
        be answered with it in context. The log line names the one that superseded it."""
        result = await delivery.ack(None)
        if result.outcome is Outcome.SETTLED:
            self._metrics.reply(bot_metrics.SUPERSEDED)
            log.info(
                "superseded by newest_message_id=%s: processed without a reply message_id=%s",
                newest_message_id,
                delivery.message_id,
            )
            return
        await self._settled(delivery, result, None, None)

    async def _settled(
        self,
        delivery: Delivery,
        result: CallResult[pb.MarkProcessedResponse],
        text: str | None,
        reply: pb.Message | None,
    ) -> None:
        """Counts and logs what became of a MarkProcessed, and acts on a refusal."""
        message_id = delivery.message_id
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
                    delivery.attempt,
                    stored,
                    message_id,
                )
            case Outcome.NOT_FOUND if result.reason == MESSAGE_DELETED:
                # A moderator deleted it while we worked: settled, nothing stored, no retry.
                self._metrics.reply(bot_metrics.GONE)
                log.info("message was deleted; reply dropped message_id=%s", message_id)
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
                    delivery, fit_reason(f"store rejected the reply: {result.problem}")
                )
            case _:
                self._metrics.reply(bot_metrics.FAILED)
                self._metrics.failure(bot_metrics.MARK_FAILED)
                log.error(
                    "MarkProcessed failed (%s); the message will be delivered again message_id=%s",
                    result.problem,
                    message_id,
                )

    async def _hand_back_busy(self, delivery: Delivery, busy: RetryLater) -> None:
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
            delivery.message_id,
        )
        await delivery.release("", retry_after_seconds=delay)

    async def _hand_back_down(self, delivery: Delivery, down: DependencyDown) -> None:
        """The responder's dependency is down: gives the message back without a reason (the
        attempt given back) and without starting anything, to come back when the next probe is
        due. DEBUG only: the breaker logged the outage once, and the consumer is pausing."""
        delay = min(down.delay_seconds or 0.0, MAX_RELEASE_RETRY_AFTER_SECONDS)
        log.debug(
            "dependency down (%s); handing the message back, attempt not counted, retry after "
            "%.1fs message_id=%s",
            down.detail,
            delay,
            delivery.message_id,
        )
        await delivery.release("", retry_after_seconds=delay)

    async def _release_failed(
        self, delivery: Delivery, reason: str, exc: BaseException | None = None
    ) -> None:
        """Gives the message back with `reason` as its last error, to be retried after a delay
        that grows with the attempt."""
        message_id = delivery.message_id
        retry_after = release_retry_after(delivery.attempt, self._config.retry_base_seconds)
        log.warning(
            "reply failed on attempt %d (%s); releasing, retry after %.1fs message_id=%s",
            delivery.attempt,
            reason,
            retry_after,
            message_id,
        )
        if exc is not None:
            log.debug("responder traceback message_id=%s", message_id, exc_info=exc)
        await delivery.release(reason, retry_after_seconds=retry_after)


class Worker(Consumer):
    """The bot's delivery loop: the library's Consumer, set up from the bot's config (its
    stores, their TLS and token, its window, lease, retry base and grace period) with an
    Answerer as its callback. Use `run()` + `stop()`, or `async with Worker(...)`."""

    def __init__(
        self,
        config: BotConfig,
        responder: Responder,
        *,
        on_connection: ConnectionCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: BotMetrics | None = None,
    ) -> None:
        answerer = Answerer(responder, config, metrics=metrics)
        stores = Stores(
            tuple(config.stores),
            ca=config.store_ca,
            cert=config.store_cert,
            key=config.store_key,
            token=config.token,
            flags="--store",
        )
        settings = ConsumerSettings(
            consumer=config.consumer,
            author=config.persona,
            max_in_flight=config.max_in_flight,
            lease_seconds=config.lease_seconds,
            retry_base_seconds=config.retry_base_seconds,
            grace_seconds=config.grace_seconds,
            role="bot",
            credentials_hint=(
                "give it the bot role's token (--token-file, or ACKBOT_BOT_TOKEN) or a client "
                "certificate with the bot role (--store-cert, --store-key)"
            ),
        )
        super().__init__(
            stores,
            answerer,
            settings,
            on_connection=on_connection,
            on_lease_lost=answerer.lease_lost,
            clock=clock,
        )
