"""The settle router: `StoreClient`, the typed calls a consumer makes (MarkProcessed,
ReleaseMessage, ExtendLease, ListMessages), routed to where they go.

A settlement goes on the open Consume session first: one request carries every settlement made
in the same turn of the event loop, and the store writes them in one transaction. The session's
answer is the unary call's, code and details alike; a settlement the session cannot answer (it
ended, the store said UNAVAILABLE, no result in time) is made by the unary call instead, which
retries and fails over by the one rule of retry.py. Doing it again is safe for the same reason
a retry is. Failures come back as outcomes (outcomes.py), never as gRPC errors.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc

from ackbot.client.channels import duration
from ackbot.client.outcomes import CallResult, Outcome, result_of
from ackbot.client.retry import (
    CALL_TIMEOUT_SECONDS,
    MIN_CALL_TIMEOUT_SECONDS,
    Target,
    call_for_outcome,
)
from ackbot.client.streams import ConsumeSession, DeliveryStream
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT")


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
        return await call_for_outcome(
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
        return await call_for_outcome(
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
