"""The status-to-outcome boundary: no gRPC error of a settling call leaves the library. A call
answers with a `CallResult` whose `Outcome` the application reads as policy, the way the store
wraps driver errors at its repository boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from ackbot.common.status import error_info, status_code, status_of
from ackbot.v1 import message_store_pb2 as pb

ResponseT = TypeVar("ResponseT")

# The ErrorInfo reason of a NOT_FOUND for a message that was deleted while it was delivered: the
# delivery is settled (nothing stored, nothing to retry), routine for a moderated store.
MESSAGE_DELETED = "MESSAGE_DELETED"

# The codes a retry may cure: the store was unreachable or did not answer in time.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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


def is_retryable(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() in RETRYABLE_CODES


def problem(exc: grpc.aio.AioRpcError) -> str:
    """`CODE: details`, one line: the store's own text, not the multi-line repr of the error."""
    return f"{exc.code().name}: {exc.details()}"


def failed(exc: grpc.aio.AioRpcError) -> CallResult[Any]:
    """The outcome of a call that ended with `exc`."""
    reason, metadata = error_info(status_of(exc))
    return CallResult(
        outcome_of(exc.code()),
        status=exc.code().name,
        details=exc.details() or "",
        reason=reason,
        metadata=metadata,
    )


def result_of(result: pb.SettlementResult) -> CallResult[Any] | None:
    """A Consume settlement's result as the unary call's CallResult; None when its code is one a
    retry may cure (UNAVAILABLE: the caller retries by the unary calls, which fail over)."""
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
