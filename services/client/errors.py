"""The store's refusals as typed exceptions, one class per status code a caller acts on.

Each carries what the store sent (docs/semantics.md, "Errors"): the code, the message for
people, the `google.rpc.ErrorInfo` reason and metadata a program branches on ("ID_TAKEN",
"MESSAGE_NOT_FOUND", ...), and the `google.rpc.BadRequest` field violations. The same classes
serve a unary call's error and an item's own status in a BatchCreateMessages response, so a
caller handles a refused create alike whichever way it was sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2

from ackbot.common.status import error_info, status_code, status_of


class StoreError(Exception):
    """A call to the store, or one item of a batch, was refused; `code` says how."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        #: the google.rpc.ErrorInfo reason ("" when the store sent none)
        self.reason = reason
        #: the ErrorInfo metadata, e.g. {"message_id": ...}
        self.metadata = dict(metadata or {})
        #: (field, description) of each broken rule, from google.rpc.BadRequest
        self.violations = list(violations)

    @property
    def message_id(self) -> str:
        """The id the error is about, when it is about one message ("" otherwise)."""
        return self.metadata.get("message_id", "")

    def __str__(self) -> str:
        return f"{self.code.name}: {super().__str__()}"


class InvalidArgument(StoreError):
    """A field breaks its rule; `violations` names each (e.g. requests[3].message.text)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExists(StoreError):
    """The id is taken by a message with a different author or text [ID_TAKEN]."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(StoreError):
    """No message has the id [MESSAGE_NOT_FOUND]."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(StoreError):
    """The message is not in a state that allows the call (LEASE_NOT_CURRENT, NOT_DEAD, ...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(StoreError):
    """The store could not be reached, lost its database or is shutting down, and retrying
    with backoff did not help within the client's budget."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(StoreError):
    """The request was larger than the store's --max-request-bytes, or the database is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(StoreError):
    """No credentials, or a token the store does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(StoreError):
    """The caller's role may not call the method."""

    code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: Mapping[grpc.StatusCode, type[StoreError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        AlreadyExists,
        NotFound,
        FailedPrecondition,
        Unavailable,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
    )
}


def from_status(status: status_pb2.Status) -> StoreError:
    """The typed error of a google.rpc.Status (a batch item's, or a call's)."""
    code = status_code(status.code)
    reason, metadata = error_info(status)
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    cls = _BY_CODE.get(code, StoreError)
    return cls(status.message, code=code, reason=reason, metadata=metadata, violations=violations)


def from_rpc_error(error: grpc.aio.AioRpcError) -> StoreError:
    """The typed error of a failed call, with the details the store put in its status."""
    return from_status(status_of(error))
