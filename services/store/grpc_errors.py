"""Domain errors -> gRPC status, in one place: the code, a BadRequest for INVALID_ARGUMENT and
an ErrorInfo for every error with a reason (AIP-193). The writing side of
`ackbot.common.status`, which clients read these statuses with.

Anything unexpected is logged with its stack trace here and reaches the client as INTERNAL
with no trace in it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ackbot.store.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ShuttingDown,
    StorageFull,
    StorageUnavailable,
    StoreError,
    WatchFellBehind,
)

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the store logged the details"
# Checked in order: a subclass (ShuttingDown is a StorageUnavailable) takes its parent's code.
_CODES: tuple[tuple[type[StoreError] | tuple[type[StoreError], ...], int], ...] = (
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (StorageUnavailable, code_pb2.UNAVAILABLE),
    ((StorageFull, WatchFellBehind), code_pb2.RESOURCE_EXHAUSTED),
)


def status_for(error: StoreError) -> status_pb2.Status:
    """The google.rpc.Status a client gets for `error` (INTERNAL for one with no code)."""
    code = next((code for kind, code in _CODES if isinstance(error, kind)), code_pb2.INTERNAL)
    details = []
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        details.append(detail)
    if error.reason is not None:
        # What a program branches on (AIP-193): the message text is for people and may change.
        details.append(_error_info(error.reason, error.metadata))
    return status_pb2.Status(code=code, message=str(error), details=details)


def internal_status() -> status_pb2.Status:
    """What a client learns of an unexpected error: that it happened, nothing more."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)


def _error_info(reason: str, metadata: dict[str, str] | None = None) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    )
    return detail


async def abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    if isinstance(error, StoreError):
        await context.abort_with_status(rpc_status.to_status(status_for(error)))
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


async def abort_shutting_down(context: grpc.aio.ServicerContext) -> None:
    """How a stream, session or watch ends when the store shuts down: the client reconnects,
    with backoff. A client that hung up first gets nothing: there is nobody left to tell."""
    if context.done():
        return
    try:
        await context.abort_with_status(
            rpc_status.to_status(status_for(ShuttingDown("the store is shutting down; reconnect")))
        )
    except grpc.aio.AbortError:
        raise
    except Exception:
        # The call ended while the status went out (gRPC core's ExecuteBatchError, a private
        # type): the client hung up during the shutdown, which is not the store's error.
        log.debug("a stream ended before its shutdown status could be sent")


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes are not a valid protobuf message (bad UTF-8 in a
    string, a corrupt wire format). gRPC would answer a failing deserializer with UNKNOWN; this
    lets the handler answer INVALID_ARGUMENT like any other bad input."""

    type_name: str
    error: str


def reject_undecodable(request: object) -> None:
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(
            [FieldViolation("request", f"is not a valid {request.type_name}: {request.error}")]
        )


Handler = TypeVar("Handler", bound=Callable[..., Any])


def maps_errors(handler: Handler) -> Handler:
    """Turns domain errors into status codes, for unary and server-streaming handlers alike."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                reject_undecodable(request)
                async for item in handler(self, request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await abort(context, exc, handler.__name__)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            reject_undecodable(request)
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, handler.__name__)

    return unary_wrapper  # type: ignore[return-value]
