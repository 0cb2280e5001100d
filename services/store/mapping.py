"""Domain values <-> protobuf, the store's page tokens, and packing responses under the size
limit. No validation and no manager here: the servicer and the Consume session map with it.

Protos are filled in place (`fill_message` writes into the field it belongs in) rather than
built apart and copied in: protobuf copies a message passed to a constructor, to `CopyFrom` or
to `append`, and at low rate that copying was a visible share of the store's CPU per message
(issue 22).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from ackbot.common.limits import MAX_RESPONSE_BYTES
from ackbot.store.models import State
from ackbot.store.types import CreateResult, Delivery, MarkResult, StoredMessage
from ackbot.store.watch import EventType
from ackbot.v1 import message_store_pb2 as pb

STATE_TO_PROTO = {
    State.PENDING: pb.MESSAGE_STATE_PENDING,
    State.LEASED: pb.MESSAGE_STATE_LEASED,
    State.PROCESSED: pb.MESSAGE_STATE_PROCESSED,
    State.DEAD: pb.MESSAGE_STATE_DEAD,
    State.HELD: pb.MESSAGE_STATE_HELD,
    State.DELETED: pb.MESSAGE_STATE_DELETED,
}
STATE_FROM_PROTO = {value: key for key, value in STATE_TO_PROTO.items()}
WATCH_EVENT_TYPES = {
    EventType.CREATED: pb.WATCH_EVENT_TYPE_CREATED,
    EventType.STATE_CHANGED: pb.WATCH_EVENT_TYPE_STATE_CHANGED,
    EventType.DELETED: pb.WATCH_EVENT_TYPE_DELETED,
}


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def duration(ns: int) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(ns)
    return value


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def fill_message(proto: pb.Message, message: StoredMessage) -> pb.Message:
    """Writes `message` into `proto` (a fresh one, or the empty field of a response)."""
    proto.id = message.id
    proto.author = message.author
    proto.text = message.text
    proto.receive_time.FromNanoseconds(message.receive_time_ns)
    proto.sequence = message.sequence
    proto.state = STATE_TO_PROTO[message.state]
    if message.reply_to:
        proto.reply_to = message.reply_to
    if message.reply_id:
        proto.reply_id = message.reply_id
    proto.delivery_attempts = message.delivery_attempts
    if message.last_error:
        proto.last_error = message.last_error
    if message.conversation_id:
        proto.conversation_id = message.conversation_id
    if message.create_time_ns is not None:
        proto.create_time.FromNanoseconds(message.create_time_ns)
    if message.lease_expire_ns is not None:
        proto.lease_expire_time.FromNanoseconds(message.lease_expire_ns)
    if message.process_time_ns is not None:
        proto.process_time.FromNanoseconds(message.process_time_ns)
    return proto


def message_to_proto(message: StoredMessage) -> pb.Message:
    return fill_message(pb.Message(), message)


def fill_delivery(proto: pb.Delivery, delivery: Delivery) -> pb.Delivery:
    fill_message(proto.message, delivery.message)
    proto.lease_token = delivery.lease_token
    proto.attempt = delivery.message.delivery_attempts
    proto.lease_expire_time.FromNanoseconds(delivery.lease_expire_ns)
    return proto


def delivery_to_proto(delivery: Delivery) -> pb.Delivery:
    return fill_delivery(pb.Delivery(), delivery)


def fill_create_response(
    proto: pb.CreateMessageResponse, result: CreateResult
) -> pb.CreateMessageResponse:
    fill_message(proto.message, result.message)
    proto.already_existed = result.already_existed
    return proto


def create_response(result: CreateResult) -> pb.CreateMessageResponse:
    return fill_create_response(pb.CreateMessageResponse(), result)


def mark_processed_response(
    result: MarkResult, proto: pb.MarkProcessedResponse | None = None
) -> pb.MarkProcessedResponse:
    proto = pb.MarkProcessedResponse() if proto is None else proto
    fill_message(proto.message, result.message)
    proto.already_processed = result.already_processed
    if result.reply is not None:
        fill_message(proto.reply, result.reply)
    return proto


ResponseT = TypeVar("ResponseT", pb.StreamUnprocessedResponse, pb.ConsumeResponse)


def delivery_responses(
    new_response: Callable[[], ResponseT],
    deliveries: Iterable[Delivery],
    results: Iterable[pb.SettlementResult] = (),
) -> Iterator[ResponseT]:
    """Deliveries (filled in place), then settlement results (ConsumeResponse only), in as few
    responses as stay under ~1 MiB each, at least one item per response: a response must stay
    well under a client's receive limit (4 MiB by default in gRPC), and a full window of large
    deliveries would not."""
    response: Any = new_response()
    size = count = 0
    for delivery in deliveries:
        item_size = fill_delivery(response.deliveries.add(), delivery).ByteSize()
        if count and size + item_size > MAX_RESPONSE_BYTES:
            # Rare (a response near 1 MiB): the delivery moves to the next response.
            del response.deliveries[-1]
            yield response
            response, size, count = new_response(), 0, 0
            fill_delivery(response.deliveries.add(), delivery)
        size += item_size
        count += 1
    for result in results:
        item_size = result.ByteSize()
        if count and size + item_size > MAX_RESPONSE_BYTES:
            yield response
            response, size, count = new_response(), 0, 0
        response.settlement_results.append(result)
        size += item_size
        count += 1
    if count:
        yield response


def fill_page(response: pb.ListMessagesResponse, messages: Iterable[StoredMessage]) -> None:
    """Fills `response.messages` from `messages`, ending early ("at most page_size") where the
    page would outgrow ~1 MiB; at least one message goes in."""
    size = 0
    for message in messages:
        item_size = fill_message(response.messages.add(), message).ByteSize()
        if size and size + item_size > MAX_RESPONSE_BYTES:
            del response.messages[-1]
            return
        size += item_size


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
