"""The settling calls (MarkProcessed, ReleaseMessage, ExtendLease), shared by their unary RPCs
and by a Consume session's settlements: validate, one call to the manager, map.

A new way to settle a delivery is one method here plus one entry in `_ACTIONS`; the unary RPC
and the Consume settlement then answer it alike.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.rpc import code_pb2

from ackbot.common.limits import Limits
from ackbot.store import mapping
from ackbot.store import validation as rules
from ackbot.store.errors import FieldViolation, InvalidArgument, StoreError
from ackbot.store.grpc_errors import internal_status, status_for
from ackbot.store.manager import MessageManager
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)


class Settlements:
    """Each method answers one settling request, filling `into` when given (the field of a
    SettlementResult the answer belongs in) rather than building a response to copy there."""

    def __init__(self, manager: MessageManager, limits: Limits) -> None:
        self._manager = manager
        self._limits = limits

    async def mark_processed(
        self, request: pb.MarkProcessedRequest, into: pb.MarkProcessedResponse | None = None
    ) -> pb.MarkProcessedResponse:
        reply = rules.mark_processed(request, self._limits)
        result = await self._manager.mark_processed(
            request.id, reply, request.lease_token, context_sequence=request.context_sequence
        )
        return mapping.mark_processed_response(result, into)

    async def release(
        self, request: pb.ReleaseMessageRequest, into: pb.ReleaseMessageResponse | None = None
    ) -> pb.ReleaseMessageResponse:
        retry_after_ns = rules.release(request, self._limits)
        message = await self._manager.release(
            request.id, request.lease_token, reason=request.reason, retry_after_ns=retry_after_ns
        )
        into = pb.ReleaseMessageResponse() if into is None else into
        mapping.fill_message(into.message, message)
        return into

    async def extend_lease(
        self, request: pb.ExtendLeaseRequest, into: pb.ExtendLeaseResponse | None = None
    ) -> pb.ExtendLeaseResponse:
        lease_ns = rules.extend_lease(request, self._limits)
        message = await self._manager.extend_lease(request.id, request.lease_token, lease_ns)
        into = pb.ExtendLeaseResponse() if into is None else into
        mapping.fill_message(into.message, message)
        return into

    async def settle(self, settlement: pb.Settlement) -> pb.SettlementResult:
        """One settlement of a Consume session, answered as its unary RPC would answer it."""
        result = pb.SettlementResult(correlation_id=settlement.correlation_id)
        action = settlement.WhichOneof("action")
        try:
            method = _ACTIONS.get(action or "")
            if method is None:
                raise InvalidArgument(
                    [FieldViolation("action", "must be mark_processed, release or extend_lease")]
                )
            assert action is not None
            await method(self, getattr(settlement, action), getattr(result, action))
            result.status.code = code_pb2.OK
        except StoreError as exc:
            result.status.CopyFrom(status_for(exc))
        except Exception:
            log.exception("unexpected error in Consume's %s", action)
            result.status.CopyFrom(internal_status())
        return result


# Settlement.action (its oneof field names) -> the call that answers it; the answer goes in
# the SettlementResult field of the same name.
_ACTIONS: dict[str, Callable[[Settlements, Any, Any], Awaitable[Any]]] = {
    "mark_processed": Settlements.mark_processed,
    "release": Settlements.release,
    "extend_lease": Settlements.extend_lease,
}
