import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATE_UNSPECIFIED: _ClassVar[MessageState]
    MESSAGE_STATE_PENDING: _ClassVar[MessageState]
    MESSAGE_STATE_LEASED: _ClassVar[MessageState]
    MESSAGE_STATE_PROCESSED: _ClassVar[MessageState]
    MESSAGE_STATE_DEAD: _ClassVar[MessageState]
    MESSAGE_STATE_HELD: _ClassVar[MessageState]
    MESSAGE_STATE_DELETED: _ClassVar[MessageState]

class WatchEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_TYPE_UNSPECIFIED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_CREATED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_STATE_CHANGED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_DELETED: _ClassVar[WatchEventType]
MESSAGE_STATE_UNSPECIFIED: MessageState
MESSAGE_STATE_PENDING: MessageState
MESSAGE_STATE_LEASED: MessageState
MESSAGE_STATE_PROCESSED: MessageState
MESSAGE_STATE_DEAD: MessageState
MESSAGE_STATE_HELD: MessageState
MESSAGE_STATE_DELETED: MessageState
WATCH_EVENT_TYPE_UNSPECIFIED: WatchEventType
WATCH_EVENT_TYPE_CREATED: WatchEventType
WATCH_EVENT_TYPE_STATE_CHANGED: WatchEventType
WATCH_EVENT_TYPE_DELETED: WatchEventType

class Message(_message.Message):
    __slots__ = ("id", "author", "text", "create_time", "receive_time", "sequence", "state", "reply_to", "reply_id", "delivery_attempts", "last_error", "lease_expire_time", "process_time", "conversation_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    REPLY_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    PROCESS_TIME_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    author: str
    text: str
    create_time: _timestamp_pb2.Timestamp
    receive_time: _timestamp_pb2.Timestamp
    sequence: int
    state: MessageState
    reply_to: str
    reply_id: str
    delivery_attempts: int
    last_error: str
    lease_expire_time: _timestamp_pb2.Timestamp
    process_time: _timestamp_pb2.Timestamp
    conversation_id: str
    def __init__(self, id: _Optional[str] = ..., author: _Optional[str] = ..., text: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., state: _Optional[_Union[MessageState, str]] = ..., reply_to: _Optional[str] = ..., reply_id: _Optional[str] = ..., delivery_attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., process_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("message", "lease_token", "attempt", "lease_expire_time")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    message: Message
    lease_token: str
    attempt: int
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., lease_token: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateMessageRequest(_message.Message):
    __slots__ = ("message", "hold")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    message: Message
    hold: bool
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., hold: _Optional[bool] = ...) -> None: ...

class CreateMessageResponse(_message.Message):
    __slots__ = ("message", "already_existed")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    message: Message
    already_existed: bool
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class BatchCreateMessagesRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CreateMessageRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CreateMessageRequest, _Mapping]]] = ...) -> None: ...

class BatchCreateMessagesResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: CreateMessageResponse
    error: _status_pb2.Status
    def __init__(self, response: _Optional[_Union[CreateMessageResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class BatchCreateMessagesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchCreateMessagesResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchCreateMessagesResult, _Mapping]]] = ...) -> None: ...

class GetMessageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "reply_to", "after_sequence", "order_by", "conversation_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: MessageState
    reply_to: str
    after_sequence: int
    order_by: str
    conversation_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[MessageState, str]] = ..., reply_to: _Optional[str] = ..., after_sequence: _Optional[int] = ..., order_by: _Optional[str] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MarkProcessedRequest(_message.Message):
    __slots__ = ("id", "lease_token", "reply", "context_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_token: str
    reply: Message
    context_sequence: int
    def __init__(self, id: _Optional[str] = ..., lease_token: _Optional[str] = ..., reply: _Optional[_Union[Message, _Mapping]] = ..., context_sequence: _Optional[int] = ...) -> None: ...

class MarkProcessedResponse(_message.Message):
    __slots__ = ("message", "reply", "already_processed")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    message: Message
    reply: Message
    already_processed: bool
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., reply: _Optional[_Union[Message, _Mapping]] = ..., already_processed: _Optional[bool] = ...) -> None: ...

class StreamUnprocessedRequest(_message.Message):
    __slots__ = ("consumer", "max_in_flight", "lease_duration")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    max_in_flight: int
    lease_duration: _duration_pb2.Duration
    def __init__(self, consumer: _Optional[str] = ..., max_in_flight: _Optional[int] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamUnprocessedResponse(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("open", "settlements", "max_in_flight", "drain")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    open: StreamUnprocessedRequest
    settlements: _containers.RepeatedCompositeFieldContainer[Settlement]
    max_in_flight: int
    drain: bool
    def __init__(self, open: _Optional[_Union[StreamUnprocessedRequest, _Mapping]] = ..., settlements: _Optional[_Iterable[_Union[Settlement, _Mapping]]] = ..., max_in_flight: _Optional[int] = ..., drain: _Optional[bool] = ...) -> None: ...

class Settlement(_message.Message):
    __slots__ = ("correlation_id", "mark_processed", "release", "extend_lease")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    MARK_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    EXTEND_LEASE_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    mark_processed: MarkProcessedRequest
    release: ReleaseMessageRequest
    extend_lease: ExtendLeaseRequest
    def __init__(self, correlation_id: _Optional[int] = ..., mark_processed: _Optional[_Union[MarkProcessedRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseMessageRequest, _Mapping]] = ..., extend_lease: _Optional[_Union[ExtendLeaseRequest, _Mapping]] = ...) -> None: ...

class SettlementResult(_message.Message):
    __slots__ = ("correlation_id", "status", "mark_processed", "release", "extend_lease")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MARK_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    EXTEND_LEASE_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    status: _status_pb2.Status
    mark_processed: MarkProcessedResponse
    release: ReleaseMessageResponse
    extend_lease: ExtendLeaseResponse
    def __init__(self, correlation_id: _Optional[int] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., mark_processed: _Optional[_Union[MarkProcessedResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseMessageResponse, _Mapping]] = ..., extend_lease: _Optional[_Union[ExtendLeaseResponse, _Mapping]] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("deliveries", "settlement_results")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_RESULTS_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    settlement_results: _containers.RepeatedCompositeFieldContainer[SettlementResult]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., settlement_results: _Optional[_Iterable[_Union[SettlementResult, _Mapping]]] = ...) -> None: ...

class ReleaseMessageRequest(_message.Message):
    __slots__ = ("id", "lease_token", "reason", "retry_after")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_token: str
    reason: str
    retry_after: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., lease_token: _Optional[str] = ..., reason: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReleaseMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class ExtendLeaseRequest(_message.Message):
    __slots__ = ("id", "lease_token", "lease_duration")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_token: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., lease_token: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExtendLeaseResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class RequeueMessageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RequeueMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class DeleteMessageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteMessageResponse(_message.Message):
    __slots__ = ("message", "already_deleted", "deleted_count")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DELETED_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    message: Message
    already_deleted: bool
    deleted_count: int
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., already_deleted: _Optional[bool] = ..., deleted_count: _Optional[int] = ...) -> None: ...

class EraseAuthorRequest(_message.Message):
    __slots__ = ("author",)
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    author: str
    def __init__(self, author: _Optional[str] = ...) -> None: ...

class EraseAuthorResponse(_message.Message):
    __slots__ = ("deleted_count", "done")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    done: bool
    def __init__(self, deleted_count: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class ApproveMessageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ApproveMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class PurgeMessagesRequest(_message.Message):
    __slots__ = ("state", "older_than")
    STATE_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_FIELD_NUMBER: _ClassVar[int]
    state: MessageState
    older_than: _duration_pb2.Duration
    def __init__(self, state: _Optional[_Union[MessageState, str]] = ..., older_than: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PurgeMessagesResponse(_message.Message):
    __slots__ = ("removed_count", "done")
    REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    removed_count: int
    done: bool
    def __init__(self, removed_count: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("pending_count", "leased_count", "processed_count", "dead_count", "oldest_pending_age", "streams", "store_id", "read_time", "held_count", "deleted_count")
    PENDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEASED_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    READ_TIME_FIELD_NUMBER: _ClassVar[int]
    HELD_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    pending_count: int
    leased_count: int
    processed_count: int
    dead_count: int
    oldest_pending_age: _duration_pb2.Duration
    streams: _containers.RepeatedCompositeFieldContainer[StreamStats]
    store_id: str
    read_time: _timestamp_pb2.Timestamp
    held_count: int
    deleted_count: int
    def __init__(self, pending_count: _Optional[int] = ..., leased_count: _Optional[int] = ..., processed_count: _Optional[int] = ..., dead_count: _Optional[int] = ..., oldest_pending_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., streams: _Optional[_Iterable[_Union[StreamStats, _Mapping]]] = ..., store_id: _Optional[str] = ..., read_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., held_count: _Optional[int] = ..., deleted_count: _Optional[int] = ...) -> None: ...

class StreamStats(_message.Message):
    __slots__ = ("consumer", "max_in_flight", "in_flight", "lease_duration")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    max_in_flight: int
    in_flight: int
    lease_duration: _duration_pb2.Duration
    def __init__(self, consumer: _Optional[str] = ..., max_in_flight: _Optional[int] = ..., in_flight: _Optional[int] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchMessagesRequest(_message.Message):
    __slots__ = ("after_sequence",)
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    def __init__(self, after_sequence: _Optional[int] = ...) -> None: ...

class WatchMessagesResponse(_message.Message):
    __slots__ = ("type", "message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: WatchEventType
    message: Message
    def __init__(self, type: _Optional[_Union[WatchEventType, str]] = ..., message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...
