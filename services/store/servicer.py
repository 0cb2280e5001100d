"""The MessageStore gRPC servicer: validate, one call to the manager, map to protobuf.

Domain errors become status codes in one place (`_status_for`); anything unexpected is logged
with its stack trace here and reaches the client as INTERNAL with no trace in it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ackbot.common.limits import (
    MAX_CONSUMER_CHARS,
    MAX_LEASE_TOKEN_CHARS,
    MAX_RESPONSE_BYTES,
    REPLY_LIMIT_METADATA,
)
from ackbot.store import validation as rules
from ackbot.store.config import StoreConfig
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
)
from ackbot.store.manager import MessageManager
from ackbot.store.models import State
from ackbot.store.repository import Delivery, NewMessage, StoredMessage
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessageStore"].full_name

_STATE_TO_PROTO = {
    State.PENDING: pb.MESSAGE_STATE_PENDING,
    State.LEASED: pb.MESSAGE_STATE_LEASED,
    State.PROCESSED: pb.MESSAGE_STATE_PROCESSED,
    State.DEAD: pb.MESSAGE_STATE_DEAD,
}
_STATE_FROM_PROTO = {value: key for key, value in _STATE_TO_PROTO.items()}
# ListMessagesRequest.order_by, normalised (AIP-132 syntax, one field).
_ORDERS = {
    "": "sequence",
    "sequence": "sequence",
    "sequence asc": "sequence",
    "sequence desc": "sequence desc",
}
ProtoT = TypeVar("ProtoT", bound=Message)


# -- protobuf mapping -----------------------------------------------------------------------


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def message_to_proto(message: StoredMessage) -> pb.Message:
    proto = pb.Message(
        id=message.id,
        author=message.author,
        text=message.text,
        receive_time=_timestamp(message.receive_time_ns),
        sequence=message.sequence,
        state=_STATE_TO_PROTO[message.state],
        reply_to=message.reply_to or "",
        reply_id=message.reply_id or "",
        delivery_attempts=message.delivery_attempts,
        last_error=message.last_error or "",
        conversation_id=message.conversation_id or "",
    )
    if message.create_time_ns is not None:
        proto.create_time.CopyFrom(_timestamp(message.create_time_ns))
    if message.lease_expire_ns is not None:
        proto.lease_expire_time.CopyFrom(_timestamp(message.lease_expire_ns))
    if message.process_time_ns is not None:
        proto.process_time.CopyFrom(_timestamp(message.process_time_ns))
    return proto


def delivery_to_proto(delivery: Delivery) -> pb.Delivery:
    return pb.Delivery(
        message=message_to_proto(delivery.message),
        lease_token=delivery.lease_token,
        attempt=delivery.message.delivery_attempts,
        lease_expire_time=_timestamp(delivery.lease_expire_ns),
    )


def _within_response_limit(protos: Iterable[ProtoT]) -> Iterator[list[ProtoT]]:
    """Groups `protos` into runs of at most ~1 MiB each (at least one proto per run).

    A response must stay well under a client's receive limit (4 MiB by default in gRPC), and a
    full window of max_in_flight large deliveries, or a full page of large messages, would not.
    """
    run: list[ProtoT] = []
    size = 0
    for proto in protos:
        proto_size = proto.ByteSize()
        if run and size + proto_size > MAX_RESPONSE_BYTES:
            yield run
            run, size = [], 0
        run.append(proto)
        size += proto_size
    if run:
        yield run


def encode_page_token(sequence: int, order_by: str) -> str:
    """An opaque token: the last sequence returned, and the order it was returned in."""
    return base64.urlsafe_b64encode(f"{order_by}:{sequence}".encode()).decode()


def decode_page_token(token: str, order_by: str) -> int | None:
    """The sequence a page token continues from, or None when it is not one of ours for
    this order."""
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError):
        return None
    token_order, _, number = text.rpartition(":")
    # Sequences are 64-bit: a longer number is not ours (and would overflow the database).
    if token_order != order_by or not number.isdigit() or len(number) > 19:
        return None
    sequence = int(number)
    return sequence if sequence < 2**63 else None


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes are not a valid protobuf message (bad UTF-8 in a
    string, a corrupt wire format). gRPC would answer a failing deserializer with UNKNOWN; this
    lets the handler answer INVALID_ARGUMENT like any other bad input."""

    type_name: str
    error: str


def _tolerant_deserializer(message_class: type[Message]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(message_class.DESCRIPTOR.full_name, str(exc))

    return deserialize


def add_to_server(servicer: MessageStoreServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer like the generated add_MessageStoreServicer_to_server, except
    that requests which do not decode reach the handler as UndecodableRequest."""
    service = pb.DESCRIPTOR.services_by_name["MessageStore"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make_handler = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make_handler(
            getattr(servicer, method.name),
            request_deserializer=_tolerant_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


# -- errors -----------------------------------------------------------------------------------


def _status_for(error: StoreError) -> status_pb2.Status:
    code, details = code_pb2.INTERNAL, []
    if isinstance(error, InvalidArgument):
        code = code_pb2.INVALID_ARGUMENT
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
    elif isinstance(error, NotFound):
        code = code_pb2.NOT_FOUND
    elif isinstance(error, AlreadyExists):
        code = code_pb2.ALREADY_EXISTS
    elif isinstance(error, FailedPrecondition):
        code = code_pb2.FAILED_PRECONDITION
    elif isinstance(error, StorageUnavailable):
        code = code_pb2.UNAVAILABLE
    elif isinstance(error, StorageFull):
        code = code_pb2.RESOURCE_EXHAUSTED
    if error.reason is not None:
        # What a program branches on (AIP-193): the message text is for people and may change.
        details.append(_error_info(error.reason, error.metadata))
    return status_pb2.Status(code=code, message=str(error), details=details)


def _error_info(reason: str, metadata: dict[str, str] | None = None) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    )
    return detail


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    if isinstance(error, StoreError):
        await context.abort_with_status(rpc_status.to_status(_status_for(error)))
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the store logged the details")


def _reject_undecodable(request: object) -> None:
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
                _reject_undecodable(request)
                async for item in handler(self, request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await _abort(context, exc, handler.__name__)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            _reject_undecodable(request)
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, handler.__name__)

    return unary_wrapper  # type: ignore[return-value]


# -- the servicer -----------------------------------------------------------------------------


class MessageStoreServicer(pb_grpc.MessageStoreServicer):
    def __init__(self, manager: MessageManager, config: StoreConfig) -> None:
        self._manager = manager
        self._config = config
        self._limits = config.limits

    @maps_errors
    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        message = request.message
        v = rules.Violations()
        rules.check_id(v, "message.id", message.id, self._limits, required=False)
        rules.check_author(v, "message.author", message.author, self._limits)
        rules.check_text(v, "message.text", message.text, self._limits)
        rules.check_id(
            v, "message.conversation_id", message.conversation_id, self._limits, required=False
        )
        if message.reply_to:
            v.add("message.reply_to", "must be empty; replies are stored by MarkProcessed")
        create_time_ns = None
        if message.HasField("create_time"):
            stamp = message.create_time
            # Computed here, not by ToNanoseconds(): protobuf raises on a Timestamp outside its
            # own range, and this request deserves INVALID_ARGUMENT naming the rule instead.
            create_time_ns = stamp.seconds * 10**9 + stamp.nanos
            if not 0 <= stamp.nanos < 10**9:
                v.add("message.create_time", f"nanos must be 0 to 999999999 (got {stamp.nanos})")
            else:
                rules.check_time_ns(v, "message.create_time", create_time_ns)
        v.raise_if_any()
        result = await self._manager.create_message(
            NewMessage(
                id=message.id,
                author=message.author,
                text=message.text,
                create_time_ns=create_time_ns,
                conversation_id=message.conversation_id or None,
            )
        )
        return pb.CreateMessageResponse(
            message=message_to_proto(result.message), already_existed=result.already_existed
        )

    @maps_errors
    async def GetMessage(
        self, request: pb.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMessageResponse:
        v = rules.Violations()
        rules.check_id(v, "id", request.id, self._limits)
        v.raise_if_any()
        message = await self._manager.get_message(request.id)
        return pb.GetMessageResponse(message=message_to_proto(message))

    @maps_errors
    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMessagesResponse:
        v = rules.Violations()
        if request.page_size < 0:
            v.add("page_size", f"must be 0 or more (got {request.page_size})")
        # Above the maximum is capped, not refused (AIP-158): a client asking for "everything"
        # gets full pages and a token, and one written for a larger limit keeps working.
        page_size = min(
            request.page_size or self._config.default_page_size, self._limits.max_page_size
        )
        after = request.after_sequence
        if after < 0:
            v.add("after_sequence", f"must be 0 or more (got {after})")
        order_by = _ORDERS.get(" ".join(request.order_by.lower().split()))
        if order_by is None:
            v.add("order_by", 'must be "sequence" or "sequence desc"')
            order_by = "sequence"
        newest_first = order_by == "sequence desc"
        before: int | None = None
        if request.page_token:
            token_sequence = decode_page_token(request.page_token, order_by)
            if token_sequence is None:
                v.add(
                    "page_token",
                    "is not a next_page_token returned by ListMessages for this order_by",
                )
            elif newest_first:
                before = token_sequence
            else:
                after = max(after, token_sequence)
        state: State | None = None
        if request.state != pb.MESSAGE_STATE_UNSPECIFIED:
            state = _STATE_FROM_PROTO.get(request.state)
            if state is None:
                v.add("state", f"must be one of the MessageState values (got {request.state})")
        rules.check_id(v, "reply_to", request.reply_to, self._limits, required=False)
        rules.check_id(v, "conversation_id", request.conversation_id, self._limits, required=False)
        v.raise_if_any()
        messages = await self._manager.list_messages(
            after_sequence=after,
            before_sequence=before,
            newest_first=newest_first,
            limit=page_size,
            state=state,
            reply_to=request.reply_to or None,
            conversation_id=request.conversation_id or None,
        )
        # A page ends early ("at most page_size") where it would outgrow a response; the
        # token continues from there.
        page = next(_within_response_limit(map(message_to_proto, messages)), [])
        response = pb.ListMessagesResponse(messages=page)
        if len(response.messages) < len(messages) or len(messages) == page_size:
            response.next_page_token = encode_page_token(response.messages[-1].sequence, order_by)
        return response

    @maps_errors
    async def MarkProcessed(
        self, request: pb.MarkProcessedRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkProcessedResponse:
        v = rules.Violations()
        rules.check_id(v, "id", request.id, self._limits)
        self._check_token(v, request.lease_token, required=False)
        reply: NewMessage | None = None
        if request.HasField("reply"):
            rules.check_author(v, "reply.author", request.reply.author, self._limits)
            rules.check_text(v, "reply.text", request.reply.text, self._limits)
            conversation = request.reply.conversation_id
            rules.check_id(v, "reply.conversation_id", conversation, self._limits, required=False)
            reply = NewMessage(
                author=request.reply.author,
                text=request.reply.text,
                conversation_id=conversation or None,
            )
        if request.context_sequence < 0:
            v.add("context_sequence", f"must be 0 or more (got {request.context_sequence})")
        v.raise_if_any()
        result = await self._manager.mark_processed(
            request.id, reply, request.lease_token, context_sequence=request.context_sequence
        )
        response = pb.MarkProcessedResponse(
            message=message_to_proto(result.message), already_processed=result.already_processed
        )
        if result.reply is not None:
            response.reply.CopyFrom(message_to_proto(result.reply))
        return response

    @maps_errors
    async def ReleaseMessage(
        self, request: pb.ReleaseMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseMessageResponse:
        v = rules.Violations()
        rules.check_id(v, "id", request.id, self._limits)
        self._check_token(v, request.lease_token, required=True)
        rules.check_reason(v, "reason", request.reason, self._limits)
        retry_after = _seconds(request.retry_after)
        rules.check_duration(
            v, "retry_after", retry_after, 0.0, self._limits.max_retry_after_seconds, required=False
        )
        v.raise_if_any()
        message = await self._manager.release(
            request.id,
            request.lease_token,
            reason=request.reason,
            retry_after_ns=request.retry_after.ToNanoseconds(),
        )
        return pb.ReleaseMessageResponse(message=message_to_proto(message))

    @maps_errors
    async def ExtendLease(
        self, request: pb.ExtendLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendLeaseResponse:
        v = rules.Violations()
        rules.check_id(v, "id", request.id, self._limits)
        self._check_token(v, request.lease_token, required=True)
        if not request.HasField("lease_duration"):
            v.add("lease_duration", "is required")
        else:
            self._check_lease_duration(v, request.lease_duration)
        v.raise_if_any()
        message = await self._manager.extend_lease(
            request.id, request.lease_token, request.lease_duration.ToNanoseconds()
        )
        return pb.ExtendLeaseResponse(message=message_to_proto(message))

    @maps_errors
    async def RequeueMessage(
        self, request: pb.RequeueMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequeueMessageResponse:
        v = rules.Violations()
        rules.check_id(v, "id", request.id, self._limits)
        v.raise_if_any()
        message = await self._manager.requeue(request.id)
        return pb.RequeueMessageResponse(message=message_to_proto(message))

    @maps_errors
    async def StreamUnprocessed(
        self, request: pb.StreamUnprocessedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamUnprocessedResponse]:
        v = rules.Violations()
        max_in_flight = request.max_in_flight or self._config.default_max_in_flight
        rules.check_range(
            v,
            "max_in_flight",
            max_in_flight,
            self._limits.min_in_flight,
            self._limits.max_in_flight,
        )
        lease_seconds = self._config.default_lease_seconds
        if request.HasField("lease_duration"):
            self._check_lease_duration(v, request.lease_duration)
            lease_seconds = _seconds(request.lease_duration)
        rules.check_label(v, "consumer", request.consumer, MAX_CONSUMER_CHARS)
        v.raise_if_any()

        async with self._manager.open_stream(
            request.consumer or context.peer(),
            max_in_flight=max_in_flight,
            lease_ns=int(lease_seconds * 1e9),
        ) as stream:
            # Headers go out now, so the client knows the stream is up before any work exists;
            # they tell it the longest reply text this store accepts.
            await context.send_initial_metadata(
                ((REPLY_LIMIT_METADATA, str(self._limits.max_text_bytes)),)
            )
            async for batch in stream:
                for run in _within_response_limit(map(delivery_to_proto, batch)):
                    yield pb.StreamUnprocessedResponse(deliveries=run)
            # The deliveries end only when the store shuts down.
            await context.abort_with_status(
                rpc_status.to_status(
                    _status_for(ShuttingDown("the store is shutting down; reconnect"))
                )
            )

    def _check_token(self, v: rules.Violations, token: str, *, required: bool) -> None:
        if not token:
            if required:
                v.add("lease_token", "is required")
        elif len(token) > MAX_LEASE_TOKEN_CHARS or not token.isascii() or not token.isprintable():
            v.add(
                "lease_token",
                f"must be at most {MAX_LEASE_TOKEN_CHARS} printable ASCII "
                "characters, as issued with a delivery",
            )

    def _check_lease_duration(self, v: rules.Violations, duration: duration_pb2.Duration) -> None:
        rules.check_duration(
            v,
            "lease_duration",
            _seconds(duration),
            self._limits.min_lease_seconds,
            self._limits.max_lease_seconds,
            required=True,
        )
