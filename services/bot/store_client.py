"""The bot's side of the MessageStore contract: the channel, the stream, and the settling calls,
retried with exponential backoff and full jitter while the store is briefly unreachable.

Every settling RPC is safe to retry (the proto says so): MarkProcessed is idempotent on the id,
ReleaseMessage and ExtendLease on the lease token.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from ackbot.common.backoff import CALL_BACKOFF, Backoff
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

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


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def is_retryable(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in RETRYABLE_CODES


async def call_with_retry(
    call: Callable[[float], Awaitable[T]],
    *,
    what: str,
    message_id: str,
    budget_seconds: float,
    backoff: Backoff = CALL_BACKOFF,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Runs `call(timeout)` until it succeeds, fails with a code that retrying cannot fix, or the
    budget is spent; then the last error propagates."""
    deadline = clock() + budget_seconds
    retry = 0
    while True:
        timeout = max(min(CALL_TIMEOUT_SECONDS, deadline - clock()), MIN_CALL_TIMEOUT_SECONDS)
        try:
            return await call(timeout)
        except grpc.aio.AioRpcError as exc:
            if not is_retryable(exc):
                raise
            pause = backoff.delay(retry, rand)
            retry += 1
            if clock() + pause >= deadline:
                raise
            log.warning(
                "%s failed (%s), retry %d in %.2fs message_id=%s",
                what,
                exc.code().name,
                retry,
                pause,
                message_id,
            )
            await sleep(pause)


def open_channel(target: str) -> grpc.aio.Channel:
    """Must run inside the event loop that will use the channel."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class StoreClient:
    """Typed, retrying wrappers over the MessageStore stub."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = pb_grpc.MessageStoreStub(channel)

    def stream(
        self, *, consumer: str, max_in_flight: int, lease_seconds: float
    ) -> grpc.aio.UnaryStreamCall:
        request = pb.StreamUnprocessedRequest(
            consumer=consumer,
            max_in_flight=max_in_flight,
            lease_duration=duration(lease_seconds),
        )
        return self._stub.StreamUnprocessed(request)

    async def mark_processed(
        self,
        message_id: str,
        lease_token: str,
        reply: pb.Message | None,
        *,
        budget_seconds: float,
    ) -> pb.MarkProcessedResponse:
        request = pb.MarkProcessedRequest(id=message_id, lease_token=lease_token, reply=reply)
        return await call_with_retry(
            lambda timeout: self._stub.MarkProcessed(request, timeout=timeout),
            what="MarkProcessed",
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
    ) -> pb.ReleaseMessageResponse:
        request = pb.ReleaseMessageRequest(
            id=message_id,
            lease_token=lease_token,
            reason=reason,
            retry_after=duration(retry_after_seconds) if retry_after_seconds > 0 else None,
        )
        return await call_with_retry(
            lambda timeout: self._stub.ReleaseMessage(request, timeout=timeout),
            what="ReleaseMessage",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )

    async def extend(
        self, message_id: str, lease_token: str, *, lease_seconds: float, budget_seconds: float
    ) -> pb.ExtendLeaseResponse:
        request = pb.ExtendLeaseRequest(
            id=message_id, lease_token=lease_token, lease_duration=duration(lease_seconds)
        )
        return await call_with_retry(
            lambda timeout: self._stub.ExtendLease(request, timeout=timeout),
            what="ExtendLease",
            message_id=message_id,
            budget_seconds=budget_seconds,
        )
