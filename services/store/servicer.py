"""The MessageStore gRPC servicer: validate, one call to the manager, map to protobuf.

Domain errors become status codes in one place (`_status_for`); anything unexpected is logged
with its stack trace here and reaches the client as INTERNAL with no trace in it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
    MAX_BATCH_CREATE_ITEMS,
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
    WatchFellBehind,
)
from ackbot.store.manager import DeliveryStream, MessageManager
from ackbot.store.models import State
from ackbot.store.types import CreateResult, Delivery, NewMessage, StoredMessage
from ackbot.store.watch import EventType
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


def _create_response(result: CreateResult) -> pb.CreateMessageResponse:
    return pb.CreateMessageResponse(
        message=message_to_proto(result.message), already_existed=result.already_existed
    )


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


_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: MessageStoreServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer like the generated add_MessageStoreServicer_to_server, except
    that requests which do not decode reach the handler as UndecodableRequest."""
    service = pb.DESCRIPTOR.services_by_name["MessageStore"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make_handler = _HANDLER_KINDS[method.client_streaming, method.server_streaming]
        handlers[method.name] = make_handler(
            getattr(servicer, method.name),
            request_deserializer=_tolerant_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _duration(ns: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(ns)
    return duration


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
    elif isinstance(error, (StorageFull, WatchFellBehind)):
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


_WATCH_EVENT_TYPES = {
    EventType.CREATED: pb.WATCH_EVENT_TYPE_CREATED,
    EventType.STATE_CHANGED: pb.WATCH_EVENT_TYPE_STATE_CHANGED,
}


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    if isinstance(error, StoreError):
        await context.abort_with_status(rpc_status.to_status(_status_for(error)))
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the store logged the details")


async def _abort_shutting_down(context: grpc.aio.ServicerContext) -> None:
    """How a stream, session or watch ends when the store shuts down: the client reconnects,
    with backoff."""
    await context.abort_with_status(
        rpc_status.to_status(_status_for(ShuttingDown("the store is shutting down; reconnect")))
    )


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


@dataclass(frozen=True)
class _StreamOptions:
    consumer: str
    max_in_flight: int
    lease_ns: int


class MessageStoreServicer(pb_grpc.MessageStoreServicer):
    def __init__(self, manager: MessageManager, config: StoreConfig) -> None:
        self._manager = manager
        self._config = config
        self._limits = config.limits

    @maps_errors
    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        v = rules.Violations()
        new = self._new_message(v, "message", request.message)
        v.raise_if_any()
        return _create_response(await self._manager.create_message(new))

    @maps_errors
    async def BatchCreateMessages(
        self, request: pb.BatchCreateMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCreateMessagesResponse:
        count = len(request.requests)
        if not 1 <= count <= MAX_BATCH_CREATE_ITEMS:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "requests", f"must hold 1 to {MAX_BATCH_CREATE_ITEMS} items (got {count})"
                    )
                ]
            )
        # Each item is checked on its own; a bad one is answered here and the rest go on.
        results: list[pb.BatchCreateMessagesResult] = [
            pb.BatchCreateMessagesResult() for _ in range(count)
        ]
        valid: list[tuple[int, NewMessage]] = []
        for index, item in enumerate(request.requests):
            v = rules.Violations()
            new = self._new_message(v, f"requests[{index}].message", item.message)
            if v.items:
                results[index].error.CopyFrom(_status_for(InvalidArgument(v.items)))
            else:
                valid.append((index, new))
        if valid:
            outcomes = await self._manager.create_messages([new for _, new in valid])
            for (index, _), outcome in zip(valid, outcomes, strict=True):
                if isinstance(outcome, StoreError):
                    results[index].error.CopyFrom(_status_for(outcome))
                else:
                    results[index].response.CopyFrom(_create_response(outcome))
        return pb.BatchCreateMessagesResponse(results=results)

    def _new_message(self, v: rules.Violations, field: str, message: pb.Message) -> NewMessage:
        """The message a create asks for, its broken rules added to `v` under `field`."""
        rules.check_id(v, f"{field}.id", message.id, self._limits, required=False)
        rules.check_author(v, f"{field}.author", message.author, self._limits)
        rules.check_text(v, f"{field}.text", message.text, self._limits)
        rules.check_id(
            v, f"{field}.conversation_id", message.conversation_id, self._limits, required=False
        )
        if message.reply_to:
            v.add(f"{field}.reply_to", "must be empty; replies are stored by MarkProcessed")
        create_time_ns = None
        if message.HasField("create_time"):
            stamp = message.create_time
            # Computed here, not by ToNanoseconds(): protobuf raises on a Timestamp outside its
            # own range, and this request deserves INVALID_ARGUMENT naming the rule instead.
            create_time_ns = stamp.seconds * 10**9 + stamp.nanos
            if not 0 <= stamp.nanos < 10**9:
                v.add(f"{field}.create_time", f"nanos must be 0 to 999999999 (got {stamp.nanos})")
            else:
                rules.check_time_ns(v, f"{field}.create_time", create_time_ns)
        return NewMessage(
            id=message.id,
            author=message.author,
            text=message.text,
            create_time_ns=create_time_ns,
            conversation_id=message.conversation_id or None,
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
        return await self._mark_processed(request)

    @maps_errors
    async def ReleaseMessage(
        self, request: pb.ReleaseMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseMessageResponse:
        return await self._release(request)

    @maps_errors
    async def ExtendLease(
        self, request: pb.ExtendLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendLeaseResponse:
        return await self._extend_lease(request)

    # The settling calls, shared by their unary RPCs and by Consume's settlements.

    async def _mark_processed(self, request: pb.MarkProcessedRequest) -> pb.MarkProcessedResponse:
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

    async def _release(self, request: pb.ReleaseMessageRequest) -> pb.ReleaseMessageResponse:
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

    async def _extend_lease(self, request: pb.ExtendLeaseRequest) -> pb.ExtendLeaseResponse:
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
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        stats = await self._manager.stats()
        response = pb.GetStatsResponse(
            pending_count=stats.counts.get(State.PENDING.value, 0),
            leased_count=stats.counts.get(State.LEASED.value, 0),
            processed_count=stats.counts.get(State.PROCESSED.value, 0),
            dead_count=stats.counts.get(State.DEAD.value, 0),
            streams=[
                pb.StreamStats(
                    consumer=stream.consumer,
                    max_in_flight=stream.max_in_flight,
                    in_flight=stream.in_flight,
                    lease_duration=_duration(stream.lease_ns),
                )
                for stream in stats.streams
            ],
            store_id=stats.store_id,
            read_time=_timestamp(stats.read_ns),
        )
        if stats.oldest_pending_ns is not None:
            age_ns = max(0, stats.read_ns - stats.oldest_pending_ns)
            response.oldest_pending_age.CopyFrom(_duration(age_ns))
        return response

    @maps_errors
    async def WatchMessages(
        self, request: pb.WatchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchMessagesResponse]:
        after_sequence: int | None = None
        if request.HasField("after_sequence"):
            after_sequence = request.after_sequence
            if after_sequence < 0:
                v = rules.Violations()
                v.add("after_sequence", f"must be 0 or more (got {after_sequence})")
                v.raise_if_any()
        async with self._manager.watch(after_sequence) as events:
            # Headers now: the client knows the watch is registered before anything happens.
            await context.send_initial_metadata(())
            async for event in events:
                yield pb.WatchMessagesResponse(
                    type=_WATCH_EVENT_TYPES[event.type], message=message_to_proto(event.message)
                )
        await _abort_shutting_down(context)

    @maps_errors
    async def StreamUnprocessed(
        self, request: pb.StreamUnprocessedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamUnprocessedResponse]:
        v = rules.Violations()
        options = self._stream_options(v, request, prefix="")
        v.raise_if_any()
        async with self._open_stream(options, context) as stream:
            async for batch in stream:
                for run in _within_response_limit(map(delivery_to_proto, batch)):
                    yield pb.StreamUnprocessedResponse(deliveries=run)
            # The deliveries end only when the store shuts down.
            await _abort_shutting_down(context)

    @maps_errors
    async def Consume(
        self,
        requests: AsyncIterator[pb.ConsumeRequest | UndecodableRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ConsumeResponse]:
        first = await anext(aiter(requests), None)
        _reject_undecodable(first)
        if not isinstance(first, pb.ConsumeRequest) or not first.HasField("open"):
            raise InvalidArgument([FieldViolation("open", "is required in the first request")])
        v = rules.Violations()
        options = self._stream_options(v, first.open, prefix="open.")
        self._check_window(v, first.max_in_flight)
        v.raise_if_any()
        async with self._open_stream(options, context) as stream:
            session = _ConsumeSession(self, stream)
            async for response in session.run(first, requests):
                yield response
            if session.shut_down:
                await _abort_shutting_down(context)

    def _stream_options(
        self, v: rules.Violations, request: pb.StreamUnprocessedRequest, *, prefix: str
    ) -> _StreamOptions:
        """The options of a new stream, StreamUnprocessed's or Consume's (whose are under
        `open`, hence the `prefix` in field names)."""
        max_in_flight = request.max_in_flight or self._config.default_max_in_flight
        rules.check_range(
            v,
            f"{prefix}max_in_flight",
            max_in_flight,
            self._limits.min_in_flight,
            self._limits.max_in_flight,
        )
        lease_seconds = self._config.default_lease_seconds
        if request.HasField("lease_duration"):
            self._check_lease_duration(v, request.lease_duration, f"{prefix}lease_duration")
            lease_seconds = _seconds(request.lease_duration)
        rules.check_label(v, f"{prefix}consumer", request.consumer, MAX_CONSUMER_CHARS)
        return _StreamOptions(request.consumer, max_in_flight, int(lease_seconds * 1e9))

    def _check_window(self, v: rules.Violations, max_in_flight: int) -> None:
        """ConsumeRequest.max_in_flight: 0 leaves the window as it is."""
        if max_in_flight:
            rules.check_range(
                v,
                "max_in_flight",
                max_in_flight,
                self._limits.min_in_flight,
                self._limits.max_in_flight,
            )

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, options: _StreamOptions, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DeliveryStream]:
        async with self._manager.open_stream(
            options.consumer or context.peer(),
            max_in_flight=options.max_in_flight,
            lease_ns=options.lease_ns,
        ) as stream:
            # Headers go out now, so the client knows the stream is up before any work exists;
            # they tell it the longest reply text this store accepts.
            await context.send_initial_metadata(
                ((REPLY_LIMIT_METADATA, str(self._limits.max_text_bytes)),)
            )
            yield stream

    async def settle(self, settlement: pb.Settlement) -> pb.SettlementResult:
        """One settlement of a Consume session, answered as its unary RPC would answer it."""
        result = pb.SettlementResult(correlation_id=settlement.correlation_id)
        action = settlement.WhichOneof("action")
        try:
            if action == "mark_processed":
                result.mark_processed.CopyFrom(
                    await self._mark_processed(settlement.mark_processed)
                )
            elif action == "release":
                result.release.CopyFrom(await self._release(settlement.release))
            elif action == "extend_lease":
                result.extend_lease.CopyFrom(await self._extend_lease(settlement.extend_lease))
            else:
                raise InvalidArgument(
                    [FieldViolation("action", "must be mark_processed, release or extend_lease")]
                )
            result.status.code = code_pb2.OK
        except StoreError as exc:
            result.status.CopyFrom(_status_for(exc))
        except Exception:
            log.exception("unexpected error in Consume's %s", action)
            result.status.CopyFrom(
                status_pb2.Status(
                    code=code_pb2.INTERNAL, message="internal error; the store logged the details"
                )
            )
        return result

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

    def _check_lease_duration(
        self, v: rules.Violations, duration: duration_pb2.Duration, field: str = "lease_duration"
    ) -> None:
        rules.check_duration(
            v,
            field,
            _seconds(duration),
            self._limits.min_lease_seconds,
            self._limits.max_lease_seconds,
            required=True,
        )


# -- Consume sessions -------------------------------------------------------------------------


@dataclass(frozen=True)
class _End:
    """The session is over: the client half-closed (neither set), the store is shutting down,
    or `error` ends it."""

    shut_down: bool = False
    error: BaseException | None = None


_Outgoing = list[Delivery] | pb.SettlementResult | _End


def _consume_responses(
    deliveries: list[pb.Delivery], results: list[pb.SettlementResult]
) -> Iterator[pb.ConsumeResponse]:
    """Packs deliveries and results into as few responses as stay under ~1 MiB each (see
    `_within_response_limit`)."""
    response, size, count = pb.ConsumeResponse(), 0, 0
    items: list[pb.Delivery | pb.SettlementResult] = [*deliveries, *results]
    for item in items:
        item_size = item.ByteSize()
        if count and size + item_size > MAX_RESPONSE_BYTES:
            yield response
            response, size, count = pb.ConsumeResponse(), 0, 0
        if isinstance(item, pb.Delivery):
            response.deliveries.append(item)
        else:
            response.settlement_results.append(item)
        size += item_size
        count += 1
    if count:
        yield response


class _ConsumeSession:
    """One Consume call once it is open: its deliveries and its settlements' results, merged into
    one stream of responses.

    Every settlement runs in a task of its own, all those of a frame started before the next
    frame is read: the manager's writes then reach group commit together and share a
    transaction, and each result goes out once its transaction has committed. Three sources feed
    one outbox: the delivery stream, the request reader, and the settlement tasks.
    """

    def __init__(self, servicer: MessageStoreServicer, stream: DeliveryStream) -> None:
        self._servicer = servicer
        self._stream = stream
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._settling: set[asyncio.Task[None]] = set()
        self.shut_down = False

    async def run(
        self,
        first: pb.ConsumeRequest,
        requests: AsyncIterator[pb.ConsumeRequest | UndecodableRequest],
    ) -> AsyncIterator[pb.ConsumeResponse]:
        self._take(first)
        reader = asyncio.create_task(self._read(requests), name="consume-reader")
        pump = asyncio.create_task(self._pump(), name="consume-deliveries")
        try:
            while True:
                items = [await self._outbox.get()]
                while not self._outbox.empty():
                    items.append(self._outbox.get_nowait())
                deliveries: list[pb.Delivery] = []
                results: list[pb.SettlementResult] = []
                end: _End | None = None
                for item in items:
                    if isinstance(item, _End):
                        end = end or item
                    elif isinstance(item, list):
                        deliveries.extend(map(delivery_to_proto, item))
                    else:
                        results.append(item)
                for response in _consume_responses(deliveries, results):
                    yield response
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    self.shut_down = end.shut_down
                    return
        finally:
            # A settlement cut short here may still commit (group commit runs it regardless);
            # its client gets no result and, as after any broken stream, settles it again.
            tasks = [reader, pump, *self._settling]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _take(self, request: pb.ConsumeRequest | UndecodableRequest) -> None:
        """Acts on one request: checks it whole first, so a bad one starts nothing."""
        _reject_undecodable(request)
        assert isinstance(request, pb.ConsumeRequest)
        v = rules.Violations()
        self._servicer._check_window(v, request.max_in_flight)
        v.raise_if_any()
        if request.max_in_flight:
            self._stream.set_max_in_flight(request.max_in_flight)
        if request.drain:
            self._stream.drain()
        for settlement in request.settlements:
            task = asyncio.create_task(self._settle(settlement))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(self, settlement: pb.Settlement) -> None:
        self._outbox.put_nowait(await self._servicer.settle(settlement))

    async def _read(self, requests: AsyncIterator[pb.ConsumeRequest | UndecodableRequest]) -> None:
        try:
            async for request in requests:
                if isinstance(request, pb.ConsumeRequest) and request.HasField("open"):
                    raise InvalidArgument(
                        [FieldViolation("open", "is allowed in the first request only")]
                    )
                self._take(request)
            # The client half-closed: every settlement read so far is answered, then it ends.
            await asyncio.gather(*list(self._settling))
            self._outbox.put_nowait(_End())
        except Exception as exc:
            self._outbox.put_nowait(_End(error=exc))

    async def _pump(self) -> None:
        try:
            async for batch in self._stream:
                self._outbox.put_nowait(batch)
            # The deliveries end only when the store shuts down.
            self._outbox.put_nowait(_End(shut_down=True))
        except Exception as exc:
            self._outbox.put_nowait(_End(error=exc))
