"""The MessageStore gRPC servicer: every handler validates (`validation`), makes one call to
the manager, and maps the answer to protobuf (`mapping`).

The rest lives in rooms of its own: domain errors become status codes in `grpc_errors`
(`maps_errors` wraps every handler), the settling calls shared with Consume in `settlements`,
and an open Consume session in `consume`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from ackbot.common.limits import REPLY_LIMIT_METADATA
from ackbot.store import mapping
from ackbot.store import validation as rules
from ackbot.store.config import StoreConfig
from ackbot.store.consume import ConsumeSession
from ackbot.store.errors import StoreError
from ackbot.store.grpc_errors import (
    UndecodableRequest,
    abort_shutting_down,
    maps_errors,
    reject_undecodable,
    status_for,
)
from ackbot.store.manager import DeliveryStream, MessageManager
from ackbot.store.models import State
from ackbot.store.settlements import Settlements
from ackbot.store.types import NewMessage
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessageStore"].full_name


class MessageStoreServicer(pb_grpc.MessageStoreServicer):
    def __init__(self, manager: MessageManager, config: StoreConfig) -> None:
        self._manager = manager
        self._config = config
        self._limits = config.limits
        self._settlements = Settlements(manager, config.limits)

    @maps_errors
    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        new = rules.create_message(request, self._limits)
        return mapping.create_response(await self._manager.create_message(new))

    @maps_errors
    async def BatchCreateMessages(
        self, request: pb.BatchCreateMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCreateMessagesResponse:
        items = rules.batch_create(request, self._limits)
        news = [item for item in items if isinstance(item, NewMessage)]
        created = iter(await self._manager.create_messages(news) if news else ())
        response = pb.BatchCreateMessagesResponse()
        for item in items:
            outcome = next(created) if isinstance(item, NewMessage) else item
            result = response.results.add()
            if isinstance(outcome, StoreError):
                result.error.CopyFrom(status_for(outcome))
            else:
                mapping.fill_create_response(result.response, outcome)
        return response

    @maps_errors
    async def GetMessage(
        self, request: pb.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMessageResponse:
        message = await self._manager.get_message(rules.message_id(request.id, self._limits))
        return pb.GetMessageResponse(message=mapping.message_to_proto(message))

    @maps_errors
    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMessagesResponse:
        query = rules.list_query(request, self._config)
        messages = await self._manager.list_messages(
            after_sequence=query.after_sequence,
            before_sequence=query.before_sequence,
            newest_first=query.newest_first,
            limit=query.limit,
            state=query.state,
            reply_to=query.reply_to,
            conversation_id=query.conversation_id,
        )
        response = pb.ListMessagesResponse()
        mapping.fill_page(response, messages)
        # A page that ended early where it would outgrow a response continues from there too.
        if len(response.messages) < len(messages) or len(messages) == query.limit:
            response.next_page_token = mapping.encode_page_token(
                response.messages[-1].sequence, query.order_by
            )
        return response

    @maps_errors
    async def MarkProcessed(
        self, request: pb.MarkProcessedRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkProcessedResponse:
        return await self._settlements.mark_processed(request)

    @maps_errors
    async def ReleaseMessage(
        self, request: pb.ReleaseMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseMessageResponse:
        return await self._settlements.release(request)

    @maps_errors
    async def ExtendLease(
        self, request: pb.ExtendLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendLeaseResponse:
        return await self._settlements.extend_lease(request)

    @maps_errors
    async def RequeueMessage(
        self, request: pb.RequeueMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequeueMessageResponse:
        message = await self._manager.requeue(rules.message_id(request.id, self._limits))
        return pb.RequeueMessageResponse(message=mapping.message_to_proto(message))

    @maps_errors
    async def EraseAuthor(
        self, request: pb.EraseAuthorRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EraseAuthorResponse]:
        author = rules.erase_author(request, self._limits)
        deleted = 0
        async for deleted in self._manager.erase_author(author):
            # The last batch found nothing: `done` goes with its count, not in a response more.
            yield pb.EraseAuthorResponse(deleted_count=deleted)
        yield pb.EraseAuthorResponse(deleted_count=deleted, done=True)

    @maps_errors
    async def PurgeMessages(
        self, request: pb.PurgeMessagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PurgeMessagesResponse]:
        purge = rules.purge(request)
        removed = 0
        async for removed in self._manager.purge(purge.state, purge.older_than_ns):
            yield pb.PurgeMessagesResponse(removed_count=removed)
        yield pb.PurgeMessagesResponse(removed_count=removed, done=True)

    @maps_errors
    async def DeleteMessage(
        self, request: pb.DeleteMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteMessageResponse:
        result = await self._manager.delete(rules.message_id(request.id, self._limits))
        return pb.DeleteMessageResponse(
            message=mapping.message_to_proto(result.message),
            already_deleted=result.already_deleted,
            deleted_count=result.deleted_count,
        )

    @maps_errors
    async def ApproveMessage(
        self, request: pb.ApproveMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApproveMessageResponse:
        message = await self._manager.approve(rules.message_id(request.id, self._limits))
        return pb.ApproveMessageResponse(message=mapping.message_to_proto(message))

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
            held_count=stats.counts.get(State.HELD.value, 0),
            deleted_count=stats.counts.get(State.DELETED.value, 0),
            streams=[
                pb.StreamStats(
                    consumer=stream.consumer,
                    max_in_flight=stream.max_in_flight,
                    in_flight=stream.in_flight,
                    lease_duration=mapping.duration(stream.lease_ns),
                )
                for stream in stats.streams
            ],
            store_id=stats.store_id,
            read_time=mapping.timestamp(stats.read_ns),
        )
        if stats.oldest_pending_ns is not None:
            age_ns = max(0, stats.read_ns - stats.oldest_pending_ns)
            response.oldest_pending_age.CopyFrom(mapping.duration(age_ns))
        return response

    @maps_errors
    async def WatchMessages(
        self, request: pb.WatchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchMessagesResponse]:
        async with self._manager.watch(rules.watch_after(request)) as events:
            # Headers now: the client knows the watch is registered before anything happens.
            await context.send_initial_metadata(())
            async for event in events:
                response = pb.WatchMessagesResponse(type=mapping.WATCH_EVENT_TYPES[event.type])
                mapping.fill_message(response.message, event.message)
                yield response
        await abort_shutting_down(context)

    @maps_errors
    async def StreamUnprocessed(
        self, request: pb.StreamUnprocessedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamUnprocessedResponse]:
        options = rules.stream_unprocessed(request, self._config)
        async with self._open_stream(options, context) as stream:
            async for batch in stream:
                for response in mapping.delivery_responses(pb.StreamUnprocessedResponse, batch):
                    yield response
            # The deliveries end only when the store shuts down.
            await abort_shutting_down(context)

    @maps_errors
    async def Consume(
        self,
        requests: AsyncIterator[pb.ConsumeRequest | UndecodableRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ConsumeResponse]:
        request = await anext(aiter(requests), None)
        reject_undecodable(request)
        # A client that half-closes at once sent no `open`, like an empty first request.
        first = request if isinstance(request, pb.ConsumeRequest) else pb.ConsumeRequest()
        options = rules.consume_open(first, self._config)
        async with self._open_stream(options, context) as stream:
            session = ConsumeSession(stream, self._settlements.settle, self._limits)
            async for response in session.run(first, requests):
                yield response
            if session.shut_down:
                await abort_shutting_down(context)

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, options: rules.StreamOptions, context: grpc.aio.ServicerContext
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


# -- registration -----------------------------------------------------------------------------


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
