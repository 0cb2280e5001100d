"""The bot's side of the MessageStore contract, and its error boundary: the channels, the stream,
and the settling calls, retried with exponential backoff and full jitter while the store is
briefly unreachable.

Every settling RPC is safe to retry (the proto says so): MarkProcessed is idempotent on the id,
ReleaseMessage and ExtendLease on the lease token.

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
import enum
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ackbot.bot.config import BotConfig
from ackbot.common.backoff import CALL_BACKOFF, Backoff
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, REPLY_LIMIT_METADATA
from ackbot.common.serving import client_credentials
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
        reason, metadata = _error_info(exc)
        return CallResult(
            outcome_of(exc.code()),
            status=exc.code().name,
            details=exc.details() or "",
            reason=reason,
            metadata=metadata,
        )
    return CallResult(Outcome.SETTLED, response)


def _error_info(exc: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The reason and metadata of the error's ErrorInfo detail; ("", {}) without one."""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:  # a status whose details disagree with its code or message
        return "", {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


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
        call: grpc.aio.UnaryStreamCall[pb.StreamUnprocessedRequest, pb.StreamUnprocessedResponse],
        *,
        address: str = "the store",
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._call = call
        self._on_open = on_open
        # The store this stream goes to, for logs.
        self.address = address
        self._responses: AsyncIterator[pb.StreamUnprocessedResponse] | None = None
        # The longest reply text the store accepts, from the headers (see wait_open).
        self.max_reply_bytes = DEFAULT_MAX_TEXT_BYTES
        # Empty while the stream lasts.
        self.end_reason = ""

    async def wait_open(self) -> bool:
        """True once the stream is established; False when the store could not be reached
        (iterating then ends at once, with the reason)."""
        # The store sends headers as soon as the stream starts, so this returns when the stream
        # is established; if the store is unreachable the call is already over.
        try:
            headers = await self._call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            self.end_reason = _problem(exc)
            return False
        if self._call.done():
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
            self.end_reason = "the store ended the stream"
            raise
        except grpc.aio.AioRpcError as exc:
            self.end_reason = _problem(exc)
            raise StopAsyncIteration from None
        return response.deliveries

    def cancel(self) -> None:
        self._call.cancel()


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
        result: CallResult[pb.MarkProcessedResponse] = await _settle(
            self._targets(lambda stub, timeout: stub.MarkProcessed(request, timeout=timeout)),
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
        return await _settle(
            self._targets(lambda stub, timeout: stub.ReleaseMessage(request, timeout=timeout)),
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
        return await _settle(
            self._targets(lambda stub, timeout: stub.ExtendLease(request, timeout=timeout)),
            what="ExtendLease",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )
