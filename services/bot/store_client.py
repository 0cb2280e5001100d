"""The bot's side of the MessageStore contract, and its error boundary: the channels, the stream,
and the settling calls, retried with exponential backoff and full jitter while the store is
briefly unreachable.

Every settling RPC is safe to retry (the proto says so): MarkProcessed is idempotent on the id,
ReleaseMessage and ExtendLease on the lease token.

The stream is a Consume session where the store has it (`ConsumeSession`), and a settling call
then goes on the session first: one request carries every settlement made in the same turn of
the event loop, and the store writes them in one transaction. The session's answer is the unary
call's, code and details alike; a settlement the session cannot answer (it ended, the store
said UNAVAILABLE, no result in time) is made by the unary call instead, which retries and fails
over as below. Doing it again is safe for the same reason a retry is.

A bot may be given several stores of one database. The stream is opened on one store at a time
(the worker picks which); a settling call goes first to the store whose stream opened last, and
on UNAVAILABLE or DEADLINE_EXCEEDED on to the next store at once, since any store of the database
can settle any message. Only when every store failed does it back off. One channel per store
rather than one gRPC channel over several addresses (`ipv4:a:1,b:2` with pick_first or
round_robin): such targets take IP literals only, and the bot must know which store a stream and
each settle went to, to prefer the stream's own store and to say so in its logs.

No gRPC error leaves this module. A settling call answers with a `CallResult` whose `Outcome` the
caller reads as policy, the way the store wraps driver errors at its repository boundary; the
stream yields deliveries until it ends and then says why (`DeliveryStream.end_reason`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from ackbot.bot.config import BotConfig
from ackbot.common.backoff import CALL_BACKOFF, Backoff
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, REPLY_LIMIT_METADATA
from ackbot.common.serving import client_credentials
from ackbot.common.status import error_info, status_code, status_of
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
ResponseT = TypeVar("ResponseT")

# One call to one store, given the seconds it may take; for logs, the store's address with it.
Call = Callable[[float], Awaitable[T]]
Target = tuple[str, Call[T]]

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Per attempt: a store that has not answered in this long is treated as unreachable.
CALL_TIMEOUT_SECONDS = 10.0
# A last attempt still gets this long, so a nearly spent budget does not doom it by timeout.
MIN_CALL_TIMEOUT_SECONDS = 1.0

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # gRPC's own reconnect backoff defaults to 1 s growing to 120 s; calls fail fast while it
    # waits, so a store that comes back would stay unused for up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Pings notice a store whose network vanished without a FIN, so the stream breaks and is
    # re-established instead of hanging. The store permits pings every 5 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # The store packs stream responses to about 1 MiB, but one delivery is as large as the
    # store's --max-text-bytes allows, which may be set past gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Outcome(enum.Enum):
    """What a settling call came to, as the caller acts on it (see `outcome_of` for the codes)."""

    # Done as asked.
    SETTLED = "settled"
    # MarkProcessed found a reply already stored (another delivery's); the response carries it.
    ALREADY_PROCESSED = "already processed"
    # FAILED_PRECONDITION: the lease token is not the message's lease any more.
    LEASE_GONE = "lease gone"
    # NOT_FOUND: the message no longer exists.
    NOT_FOUND = "not found"
    # INVALID_ARGUMENT: the request breaks the store's rules; sending it again cannot help.
    REJECTED = "rejected"
    # Any other code that retrying cannot fix (INTERNAL, RESOURCE_EXHAUSTED, ...): the store did
    # not do it, though the request itself may be fine.
    FAILED = "failed"
    # UNAVAILABLE or DEADLINE_EXCEEDED until the budget was spent.
    UNAVAILABLE = "unavailable"


_OUTCOME_OF_CODE = {
    grpc.StatusCode.FAILED_PRECONDITION: Outcome.LEASE_GONE,
    grpc.StatusCode.NOT_FOUND: Outcome.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: Outcome.REJECTED,
    grpc.StatusCode.UNAVAILABLE: Outcome.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Outcome.UNAVAILABLE,
}


def outcome_of(code: grpc.StatusCode) -> Outcome:
    """The outcome of a call that failed with `code` (after its retries, if it had any)."""
    return _OUTCOME_OF_CODE.get(code, Outcome.FAILED)


@dataclass(frozen=True)
class CallResult(Generic[ResponseT]):
    """A settling call's outcome, with the store's response when there is one."""

    outcome: Outcome
    response: ResponseT | None = None
    # When the call failed: the status code's name and the store's explanation.
    status: str = ""
    details: str = ""
    # The store's google.rpc.ErrorInfo, when the error carried one: what a caller branches on.
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def problem(self) -> str:
        """`CODE: details` of a failed call, one line, for logs and release reasons."""
        return f"{self.status}: {self.details}"


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def is_retryable(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in RETRYABLE_CODES


def reply_limit(headers: grpc.aio.Metadata | None) -> int:
    """The store's text limit from a stream's initial metadata; a store too old to send it
    enforces the contract's default."""
    value = headers.get(REPLY_LIMIT_METADATA) if headers is not None else None
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return DEFAULT_MAX_TEXT_BYTES


def _problem(exc: grpc.aio.AioRpcError) -> str:
    # details() is one line: the store's own text, not the multi-line repr of the error.
    return f"{exc.code().name}: {exc.details()}"


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
    retry_log_level: int = logging.WARNING,
) -> T:
    """Runs each target's `call(timeout)`, from the first on, until one succeeds, one fails with a
    code that retrying cannot fix, or the budget is spent; then the last error propagates.
    Each retry is logged at `retry_log_level` (the client library's is DEBUG: a library does not
    warn on every retry; what still fails reaches its caller as the error).

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
                log.log(
                    retry_log_level,
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
            log.log(
                retry_log_level,
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


async def _settle(
    targets: Sequence[Target[ResponseT]],
    *,
    what: str,
    message_id: str,
    budget_seconds: float,
) -> CallResult[ResponseT]:
    """`call_with_failover`, with the error that ended it turned into an outcome."""
    try:
        response = await call_with_failover(
            targets, what=what, message_id=message_id, budget_seconds=budget_seconds
        )
    except grpc.aio.AioRpcError as exc:
        reason, metadata = error_info(status_of(exc))
        return CallResult(
            outcome_of(exc.code()),
            status=exc.code().name,
            details=exc.details() or "",
            reason=reason,
            metadata=metadata,
        )
    return CallResult(Outcome.SETTLED, response)


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """Must run inside the event loop that will use the channel. `credentials` (see
    `store_credentials`) carry TLS and the bot's token; None: plaintext, no token."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def store_credentials(config: BotConfig, target: str) -> grpc.ChannelCredentials | None:
    """The channel credentials of the bot's calls to the store at `target`: TLS by --store-ca
    (mutual with --store-cert/--store-key) and the bot's token on every call."""
    return client_credentials(
        target,
        ca=config.store_ca,
        cert=config.store_cert,
        key=config.store_key,
        token=config.token,
        flags="--store",
    )


class DeliveryStream:
    """One StreamUnprocessed call. Iterating it yields the deliveries of each response until the
    stream ends, for whatever reason, and raises no gRPC error: `end_reason` then says why.

    Cancelling it locally (`cancel()`) ends a pending read with asyncio.CancelledError, as with
    any cancelled call.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[pb.StreamUnprocessedRequest, pb.StreamUnprocessedResponse]
        | grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.ConsumeResponse],
        *,
        address: str = "the store",
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._call = call
        self._on_open = on_open
        # The store this stream goes to, for logs.
        self.address = address
        self._responses: AsyncIterator[Any] | None = None
        # The longest reply text the store accepts, from the headers (see wait_open).
        self.max_reply_bytes = DEFAULT_MAX_TEXT_BYTES
        # Empty while the stream lasts.
        self.end_reason = ""
        # The status code it ended with, once known (None: still open, or not yet read).
        self.end_code: grpc.StatusCode | None = None

    async def wait_open(self) -> bool:
        """True once the stream is established; False when the store could not be reached
        (iterating then ends at once, with the reason)."""
        # The store sends headers as soon as the stream starts, so this returns when the stream
        # is established; if the store is unreachable the call is already over.
        try:
            headers = await self._call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            self._ended(exc.code(), _problem(exc))
            return False
        if self._call.done():
            code = await self._call.code()
            self._ended(code, f"{code.name}: {await self._call.details()}")
            return False
        self.max_reply_bytes = reply_limit(headers)
        if self._on_open is not None:
            self._on_open()
        return True

    def __aiter__(self) -> DeliveryStream:
        return self

    async def __anext__(self) -> Sequence[pb.Delivery]:
        if self._responses is None:
            self._responses = aiter(self._call)
        try:
            response = await anext(self._responses)
        except StopAsyncIteration:
            self._ended(grpc.StatusCode.OK, "the store ended the stream")
            raise
        except grpc.aio.AioRpcError as exc:
            self._ended(exc.code(), _problem(exc))
            raise StopAsyncIteration from None
        self._received(response)
        deliveries: Sequence[pb.Delivery] = response.deliveries
        return deliveries

    def _received(self, response: Any) -> None:
        """A response arrived (a ConsumeSession also reads its settlement results here)."""

    def _ended(self, code: grpc.StatusCode, reason: str) -> None:
        self.end_code = code
        self.end_reason = reason

    def cancel(self) -> None:
        self._call.cancel()


class ConsumeSession(DeliveryStream):
    """One Consume call: deliveries as a DeliveryStream, and settlements sent on the same
    stream (`settle`), each answered by its result.

    Settlements made in the same turn of the event loop go out in one request, so the store
    writes them in one transaction. `drain()` asks the store for no further deliveries;
    `finish()` half-closes and waits for the store to answer what it was sent and end the call.
    Once open, a task of its own reads the responses, so results arrive whether or not anyone
    is iterating the deliveries.
    """

    def __init__(
        self,
        stub: pb_grpc.MessageStoreStub,
        opening: pb.StreamUnprocessedRequest,
        *,
        address: str = "the store",
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._opening = opening
        self._pending: list[pb.Settlement] = []
        self._drain = False
        self._closing = False
        self._wake = asyncio.Event()
        self._results: dict[int, asyncio.Future[pb.SettlementResult]] = {}
        self._correlation_ids = itertools.count(1)
        self._over = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        # Batches of deliveries, then None once the session is over.
        self._inbox: asyncio.Queue[Sequence[pb.Delivery] | None] = asyncio.Queue()
        super().__init__(stub.Consume(self._requests()), address=address, on_open=on_open)

    async def wait_open(self) -> bool:
        opened = await super().wait_open()
        if opened:
            self._start_reading()
        return opened

    def _start_reading(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f"consume {self.address}")

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._received(response)
                if response.deliveries:
                    self._inbox.put_nowait(list(response.deliveries))
            self._ended(grpc.StatusCode.OK, "the store ended the stream")
        except grpc.aio.AioRpcError as exc:
            self._ended(exc.code(), _problem(exc))
        except asyncio.CancelledError:
            self._ended(grpc.StatusCode.CANCELLED, "cancelled")
            raise
        finally:
            self._inbox.put_nowait(None)

    async def __anext__(self) -> Sequence[pb.Delivery]:
        if self._over.is_set() and self._inbox.empty():
            raise StopAsyncIteration
        self._start_reading()
        batch = await self._inbox.get()
        if batch is None:
            self._inbox.put_nowait(None)  # for the next reader, if any
            raise StopAsyncIteration
        return batch

    async def _requests(self) -> AsyncIterator[pb.ConsumeRequest]:
        yield pb.ConsumeRequest(open=self._opening)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending or self._drain:
                request = pb.ConsumeRequest(settlements=self._pending, drain=self._drain)
                self._pending, self._drain = [], False
                yield request
            if self._closing:
                return

    @property
    def accepting(self) -> bool:
        """Whether a settlement may still be sent on this session."""
        return not self._closing and not self._over.is_set()

    async def settle(
        self, settlement: pb.Settlement, wait_seconds: float
    ) -> pb.SettlementResult | None:
        """Sends `settlement` and returns its result; None when the session ended, or gave no
        result within `wait_seconds` (the caller settles another way: every settlement is
        safe to repeat)."""
        if not self.accepting:
            return None
        correlation_id = next(self._correlation_ids)
        settlement.correlation_id = correlation_id
        future: asyncio.Future[pb.SettlementResult] = asyncio.get_running_loop().create_future()
        self._results[correlation_id] = future
        self._pending.append(settlement)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_seconds)
        except (TimeoutError, _SessionOver):
            return None
        finally:
            self._results.pop(correlation_id, None)

    def drain(self) -> None:
        """Asks the store to send no further delivery on this session."""
        self._drain = True
        self._wake.set()

    async def finish(self, wait_seconds: float) -> None:
        """Half-closes the session and waits up to `wait_seconds` for the store to end it
        (after answering every settlement sent); the caller then cancels it either way."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._over.wait(), wait_seconds)

    def _received(self, response: Any) -> None:
        for result in response.settlement_results:
            future = self._results.get(result.correlation_id)
            if future is not None and not future.done():
                future.set_result(result)

    def _ended(self, code: grpc.StatusCode, reason: str) -> None:
        if self._over.is_set():
            return
        super()._ended(code, reason)
        self._over.set()
        for future in self._results.values():
            if not future.done():
                future.set_exception(_SessionOver())

    def cancel(self) -> None:
        super().cancel()
        self._ended(grpc.StatusCode.CANCELLED, "cancelled")
        if self._reader is not None:
            self._reader.cancel()
        else:
            self._inbox.put_nowait(None)


class _SessionOver(Exception):
    """The session ended before a settlement's result came."""


def result_of(result: pb.SettlementResult) -> CallResult[Any] | None:
    """A settlement's result as the unary call's CallResult; None when its code is one a retry
    may cure (UNAVAILABLE: the caller retries by the unary calls, which fail over)."""
    code = status_code(result.status.code)
    if code is grpc.StatusCode.OK:
        which = result.WhichOneof("response")
        return CallResult(Outcome.SETTLED, getattr(result, which) if which else None)
    if code in RETRYABLE_CODES:
        return None
    reason, metadata = error_info(result.status)
    return CallResult(
        outcome_of(code),
        status=code.name,
        details=result.status.message,
        reason=reason,
        metadata=metadata,
    )


class StoreClient:
    """Typed, retrying wrappers over the MessageStore stubs; failures come back as outcomes.

    `stores` is one channel, or several stores' channels by address, in failover order; they
    must all be stores of one database (see the module docstring).
    """

    def __init__(self, stores: grpc.aio.Channel | Mapping[str, grpc.aio.Channel]) -> None:
        channels = stores if isinstance(stores, Mapping) else {"the store": stores}
        if not channels:
            raise ValueError("a StoreClient needs at least one store")
        self._addresses = tuple(channels)
        self._stubs = tuple(pb_grpc.MessageStoreStub(channel) for channel in channels.values())
        # Where settling calls go first: the store whose stream opened last. A settle made on
        # that store also frees the delivery's slot on its stream (the store's ledger of slots
        # is its own, not the database's), and that store was reachable a moment ago.
        self._preferred = 0
        # The open Consume session settlements go on first, if any.
        self._session: ConsumeSession | None = None
        # Stores that answered Consume with UNIMPLEMENTED (older ones), by index.
        self._without_consume: set[int] = set()
        self._clock = time.monotonic

    @property
    def addresses(self) -> tuple[str, ...]:
        """The stores, in failover order."""
        return self._addresses

    def stream(
        self, *, store: int = 0, consumer: str, max_in_flight: int, lease_seconds: float
    ) -> DeliveryStream:
        """A stream from the store at index `store` of `addresses`."""
        request = pb.StreamUnprocessedRequest(
            consumer=consumer,
            max_in_flight=max_in_flight,
            lease_duration=duration(lease_seconds),
        )

        def opened() -> None:
            self._preferred = store

        return DeliveryStream(
            self._stubs[store].StreamUnprocessed(request),
            address=self._addresses[store],
            on_open=opened,
        )

    def has_consume(self, store: int) -> bool:
        """False once the store at index `store` answered Consume with UNIMPLEMENTED."""
        return store not in self._without_consume

    def lacks_consume(self, store: int) -> None:
        """The store at index `store` is older than Consume: use StreamUnprocessed there."""
        self._without_consume.add(store)

    def session(
        self, *, store: int = 0, consumer: str, max_in_flight: int, lease_seconds: float
    ) -> ConsumeSession:
        """A Consume session with the store at index `store` of `addresses`; once it is open,
        settling calls go on it first."""
        opening = pb.StreamUnprocessedRequest(
            consumer=consumer,
            max_in_flight=max_in_flight,
            lease_duration=duration(lease_seconds),
        )

        def opened() -> None:
            self._preferred = store
            self._session = session

        session = ConsumeSession(
            self._stubs[store], opening, address=self._addresses[store], on_open=opened
        )
        return session

    async def _on_session(
        self, settlement: pb.Settlement, budget_seconds: float
    ) -> CallResult[Any] | None:
        """The settlement made on the open session; None when there is none, or it gave no
        usable answer: the caller then makes the unary call."""
        session = self._session
        if session is None or not session.accepting:
            return None
        result = await session.settle(
            settlement, max(min(CALL_TIMEOUT_SECONDS, budget_seconds), MIN_CALL_TIMEOUT_SECONDS)
        )
        if result is None:
            log.warning(
                "%s got no answer on the session to %s; making the call instead",
                settlement.WhichOneof("action"),
                session.address,
            )
            return None
        return result_of(result)

    async def _settle_both_ways(
        self,
        settlement: pb.Settlement,
        invoke: Callable[[pb_grpc.MessageStoreStub, float], Awaitable[ResponseT]],
        *,
        what: str,
        message_id: str,
        budget_seconds: float,
    ) -> CallResult[ResponseT]:
        """On the session first; by the unary call `invoke` (with its retries and failover)
        for what is left of the budget when the session cannot answer."""
        started = self._clock()
        on_session = await self._on_session(settlement, budget_seconds)
        if on_session is not None:
            return on_session
        return await _settle(
            self._targets(invoke),
            what=what,
            message_id=message_id,
            budget_seconds=max(budget_seconds - (self._clock() - started), 0.0),
        )

    def _targets(
        self, invoke: Callable[[pb_grpc.MessageStoreStub, float], Awaitable[ResponseT]]
    ) -> list[Target[ResponseT]]:
        """`invoke` on each store: the preferred one, then those after it in the list, wrapping
        round."""
        count = len(self._stubs)
        order = [(self._preferred + step) % count for step in range(count)]
        return [(self._addresses[i], functools.partial(invoke, self._stubs[i])) for i in order]

    async def mark_processed(
        self,
        message_id: str,
        lease_token: str,
        reply: pb.Message | None,
        *,
        budget_seconds: float,
        context_sequence: int = 0,
    ) -> CallResult[pb.MarkProcessedResponse]:
        """SETTLED or ALREADY_PROCESSED with the response (its `reply` is the stored reply);
        NOT_FOUND, REJECTED, FAILED or UNAVAILABLE without one (LEASE_GONE with reason
        CONTEXT_STALE when fenced by `context_sequence`)."""
        request = pb.MarkProcessedRequest(
            id=message_id, lease_token=lease_token, reply=reply, context_sequence=context_sequence
        )
        result = await self._settle_both_ways(
            pb.Settlement(mark_processed=request),
            lambda stub, timeout: stub.MarkProcessed(request, timeout=timeout),
            what="MarkProcessed",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )
        if result.response is not None and result.response.already_processed:
            return CallResult(Outcome.ALREADY_PROCESSED, result.response)
        return result

    async def list_messages(
        self, request: pb.ListMessagesRequest, *, message_id: str, budget_seconds: float
    ) -> CallResult[pb.ListMessagesResponse]:
        """ListMessages for the delivery of `message_id` (named in the logs of retries)."""
        return await _settle(
            self._targets(lambda stub, timeout: stub.ListMessages(request, timeout=timeout)),
            what="ListMessages",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )

    async def release(
        self,
        message_id: str,
        lease_token: str,
        *,
        reason: str,
        retry_after_seconds: float,
        budget_seconds: float,
    ) -> CallResult[pb.ReleaseMessageResponse]:
        request = pb.ReleaseMessageRequest(
            id=message_id,
            lease_token=lease_token,
            reason=reason,
            retry_after=duration(retry_after_seconds) if retry_after_seconds > 0 else None,
        )
        return await self._settle_both_ways(
            pb.Settlement(release=request),
            lambda stub, timeout: stub.ReleaseMessage(request, timeout=timeout),
            what="ReleaseMessage",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )

    async def extend(
        self, message_id: str, lease_token: str, *, lease_seconds: float, budget_seconds: float
    ) -> CallResult[pb.ExtendLeaseResponse]:
        request = pb.ExtendLeaseRequest(
            id=message_id, lease_token=lease_token, lease_duration=duration(lease_seconds)
        )
        return await self._settle_both_ways(
            pb.Settlement(extend_lease=request),
            lambda stub, timeout: stub.ExtendLease(request, timeout=timeout),
            what="ExtendLease",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )
