"""Request rules from docs/semantics.md. Each check names the field and the rule it breaks.

Two layers: `check_*` are pure functions over plain values (no protobuf, no database), unit-
tested directly; below them, one function per request (or per part shared by several) reads
the protobuf request, checks all of it and returns what the manager is called with, or raises
InvalidArgument naming every broken rule. The servicer's handlers call one of those, so a new
RPC's rules land here, beside the rules of the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from google.protobuf import duration_pb2

from ackbot.common.limits import (
    ID_PATTERN,
    MAX_BATCH_CREATE_ITEMS,
    MAX_CONSUMER_CHARS,
    MAX_LEASE_TOKEN_CHARS,
    Limits,
    first_forbidden_char,
    utf8_size,
)
from ackbot.store.config import StoreConfig
from ackbot.store.errors import FieldViolation, InvalidArgument
from ackbot.store.mapping import STATE_FROM_PROTO, decode_page_token, seconds
from ackbot.store.models import State
from ackbot.store.types import NewMessage
from ackbot.v1 import message_store_pb2 as pb

# Nanoseconds in a signed 64-bit integer: the range the database column can hold.
MIN_TIME_NS = -(2**63)
MAX_TIME_NS = 2**63 - 1


class Violations:
    """Collects every broken rule of one request, so the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def check_id(
    v: Violations, field: str, value: str, limits: Limits, *, required: bool = True
) -> None:
    if not value:
        if required:
            v.add(field, "is required")
        return
    if len(value) > limits.max_id_chars:
        v.add(field, f"must be at most {limits.max_id_chars} characters (got {len(value)})")
    elif not ID_PATTERN.fullmatch(value):
        v.add(field, "may contain only the characters A-Z a-z 0-9 . _ : ~ -")


def check_author(v: Violations, field: str, value: str, limits: Limits) -> None:
    if not value:
        v.add(field, "is required")
        return
    if len(value) > limits.max_author_chars:
        v.add(field, f"must be at most {limits.max_author_chars} characters (got {len(value)})")
    bad = first_forbidden_char(value, allow_newlines=False)
    if bad is not None:
        v.add(field, f"must not contain control characters (found U+{ord(bad):04X})")


def check_label(v: Violations, field: str, value: str, max_chars: int) -> None:
    """An optional free-form name (a stream's consumer) that ends up in log lines."""
    if len(value) > max_chars:
        v.add(field, f"must be at most {max_chars} characters (got {len(value)})")
    bad = first_forbidden_char(value, allow_newlines=False)
    if bad is not None:
        v.add(field, f"must not contain control characters (found U+{ord(bad):04X})")


def check_text(v: Violations, field: str, value: str, limits: Limits) -> None:
    if not value:
        v.add(field, "is required")
        return
    size = utf8_size(value)
    if size > limits.max_text_bytes:
        v.add(field, f"must be at most {limits.max_text_bytes} bytes of UTF-8 (got {size})")
    bad = first_forbidden_char(value, allow_newlines=True)
    if bad is not None:
        v.add(
            field,
            "must not contain control characters other than tab, line feed and carriage "
            f"return (found U+{ord(bad):04X})",
        )


def check_reason(v: Violations, field: str, value: str, limits: Limits) -> None:
    if len(value) > limits.max_reason_chars:
        v.add(field, f"must be at most {limits.max_reason_chars} characters (got {len(value)})")
    if "\x00" in value:
        v.add(field, "must not contain NUL (U+0000)")


def check_time_ns(v: Violations, field: str, value_ns: int) -> None:
    if not MIN_TIME_NS <= value_ns <= MAX_TIME_NS:
        v.add(field, "must be between 1677-09-21 and 2262-04-11 (64-bit nanoseconds)")


def check_duration(
    v: Violations, field: str, seconds: float, low: float, high: float, *, required: bool
) -> None:
    if seconds == 0 and not required:
        return
    if not low <= seconds <= high:
        v.add(field, f"must be between {low:g} s and {high:g} s (got {seconds:g} s)")


def check_range(v: Violations, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        v.add(field, f"must be between {low} and {high} (got {value})")


def check_lease_token(v: Violations, token: str, *, required: bool) -> None:
    if not token:
        if required:
            v.add("lease_token", "is required")
    elif len(token) > MAX_LEASE_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        v.add(
            "lease_token",
            f"must be at most {MAX_LEASE_TOKEN_CHARS} printable ASCII "
            "characters, as issued with a delivery",
        )


def check_lease_duration(
    v: Violations, field: str, value: duration_pb2.Duration, limits: Limits
) -> None:
    check_duration(
        v, field, seconds(value), limits.min_lease_seconds, limits.max_lease_seconds, required=True
    )


def check_window(v: Violations, field: str, max_in_flight: int, limits: Limits) -> None:
    check_range(v, field, max_in_flight, limits.min_in_flight, limits.max_in_flight)


def check_create_time(v: Violations, field: str, message: pb.Message) -> int | None:
    """The message's create_time in nanoseconds, None when it has none."""
    if not message.HasField("create_time"):
        return None
    stamp = message.create_time
    # Computed here, not by ToNanoseconds(): protobuf raises on a Timestamp outside its own
    # range, and this request deserves INVALID_ARGUMENT naming the rule instead.
    create_time_ns = stamp.seconds * 10**9 + stamp.nanos
    if not 0 <= stamp.nanos < 10**9:
        v.add(field, f"nanos must be 0 to 999999999 (got {stamp.nanos})")
    else:
        check_time_ns(v, field, create_time_ns)
    return create_time_ns


# -- whole requests ---------------------------------------------------------------------------


def message_id(value: str, limits: Limits) -> str:
    """The `id` of a request about one message (GetMessage, RequeueMessage, DeleteMessage,
    ApproveMessage)."""
    v = Violations()
    check_id(v, "id", value, limits)
    v.raise_if_any()
    return value


def new_message(v: Violations, field: str, message: pb.Message, limits: Limits) -> NewMessage:
    """The message a create asks for, its broken rules added to `v` under `field`."""
    check_id(v, f"{field}.id", message.id, limits, required=False)
    check_author(v, f"{field}.author", message.author, limits)
    check_text(v, f"{field}.text", message.text, limits)
    check_id(v, f"{field}.conversation_id", message.conversation_id, limits, required=False)
    if message.reply_to:
        v.add(f"{field}.reply_to", "must be empty; replies are stored by MarkProcessed")
    return NewMessage(
        id=message.id,
        author=message.author,
        text=message.text,
        create_time_ns=check_create_time(v, f"{field}.create_time", message),
        conversation_id=message.conversation_id or None,
    )


def _hold(request: pb.CreateMessageRequest) -> bool | None:
    """The request's `hold`; None when unset (the store's --hold-new-messages decides)."""
    return request.hold if request.HasField("hold") else None


def create_message(request: pb.CreateMessageRequest, limits: Limits) -> NewMessage:
    v = Violations()
    new = new_message(v, "message", request.message, limits)
    v.raise_if_any()
    return dataclasses.replace(new, hold=_hold(request))


def batch_create(
    request: pb.BatchCreateMessagesRequest, limits: Limits
) -> list[NewMessage | InvalidArgument]:
    """Checks the batch as a whole (raising), then each item on its own: a bad item becomes its
    InvalidArgument, to be answered in its place while the rest go on."""
    count = len(request.requests)
    if not 1 <= count <= MAX_BATCH_CREATE_ITEMS:
        raise InvalidArgument(
            [
                FieldViolation(
                    "requests", f"must hold 1 to {MAX_BATCH_CREATE_ITEMS} items (got {count})"
                )
            ]
        )
    items: list[NewMessage | InvalidArgument] = []
    for index, item in enumerate(request.requests):
        v = Violations()
        new = new_message(v, f"requests[{index}].message", item.message, limits)
        items.append(
            InvalidArgument(v.items) if v.items else dataclasses.replace(new, hold=_hold(item))
        )
    return items


# ListMessagesRequest.order_by, normalised (AIP-132 syntax, one field).
_ORDERS = {
    "": "sequence",
    "sequence": "sequence",
    "sequence asc": "sequence",
    "sequence desc": "sequence desc",
}


@dataclass(frozen=True)
class ListQuery:
    """A checked ListMessages request: the manager's list_messages arguments, and the order
    its page token is for."""

    after_sequence: int
    before_sequence: int | None
    newest_first: bool
    limit: int
    state: State | None
    reply_to: str | None
    conversation_id: str | None
    order_by: str


def list_query(request: pb.ListMessagesRequest, config: StoreConfig) -> ListQuery:
    limits = config.limits
    v = Violations()
    if request.page_size < 0:
        v.add("page_size", f"must be 0 or more (got {request.page_size})")
    # Above the maximum is capped, not refused (AIP-158): a client asking for "everything"
    # gets full pages and a token, and one written for a larger limit keeps working.
    page_size = min(request.page_size or config.default_page_size, limits.max_page_size)
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
        state = STATE_FROM_PROTO.get(request.state)
        if state is None:
            v.add("state", f"must be one of the MessageState values (got {request.state})")
    check_id(v, "reply_to", request.reply_to, limits, required=False)
    check_id(v, "conversation_id", request.conversation_id, limits, required=False)
    v.raise_if_any()
    return ListQuery(
        after_sequence=after,
        before_sequence=before,
        newest_first=newest_first,
        limit=page_size,
        state=state,
        reply_to=request.reply_to or None,
        conversation_id=request.conversation_id or None,
        order_by=order_by,
    )


def watch_after(request: pb.WatchMessagesRequest) -> int | None:
    """The sequence a watch replays from, None for "from now"."""
    if not request.HasField("after_sequence"):
        return None
    if request.after_sequence < 0:
        raise InvalidArgument(
            [FieldViolation("after_sequence", f"must be 0 or more (got {request.after_sequence})")]
        )
    return request.after_sequence


@dataclass(frozen=True)
class StreamOptions:
    consumer: str
    max_in_flight: int
    lease_ns: int


def stream_options(
    v: Violations, request: pb.StreamUnprocessedRequest, config: StoreConfig, *, prefix: str = ""
) -> StreamOptions:
    """The options of a new stream, StreamUnprocessed's or Consume's (whose are under
    `open`, hence the `prefix` in field names)."""
    max_in_flight = request.max_in_flight or config.default_max_in_flight
    check_window(v, f"{prefix}max_in_flight", max_in_flight, config.limits)
    lease_seconds = config.default_lease_seconds
    if request.HasField("lease_duration"):
        check_lease_duration(v, f"{prefix}lease_duration", request.lease_duration, config.limits)
        lease_seconds = seconds(request.lease_duration)
    check_label(v, f"{prefix}consumer", request.consumer, MAX_CONSUMER_CHARS)
    return StreamOptions(request.consumer, max_in_flight, int(lease_seconds * 1e9))


def stream_unprocessed(request: pb.StreamUnprocessedRequest, config: StoreConfig) -> StreamOptions:
    v = Violations()
    options = stream_options(v, request, config)
    v.raise_if_any()
    return options


def consume_open(request: pb.ConsumeRequest, config: StoreConfig) -> StreamOptions:
    """A Consume session's first request: it opens the stream (and may settle already)."""
    if not request.HasField("open"):
        raise InvalidArgument([FieldViolation("open", "is required in the first request")])
    v = Violations()
    options = stream_options(v, request.open, config, prefix="open.")
    check_consume_window(v, request.max_in_flight, config.limits)
    v.raise_if_any()
    return options


def check_consume_window(v: Violations, max_in_flight: int, limits: Limits) -> None:
    """ConsumeRequest.max_in_flight: 0 leaves the window as it is."""
    if max_in_flight:
        check_window(v, "max_in_flight", max_in_flight, limits)


# The settling requests, for their unary RPCs and Consume's settlements alike.


def mark_processed(request: pb.MarkProcessedRequest, limits: Limits) -> NewMessage | None:
    """Checks a MarkProcessed; returns its reply, if it has one."""
    v = Violations()
    check_id(v, "id", request.id, limits)
    check_lease_token(v, request.lease_token, required=False)
    reply: NewMessage | None = None
    if request.HasField("reply"):
        check_author(v, "reply.author", request.reply.author, limits)
        check_text(v, "reply.text", request.reply.text, limits)
        conversation = request.reply.conversation_id
        check_id(v, "reply.conversation_id", conversation, limits, required=False)
        reply = NewMessage(
            author=request.reply.author,
            text=request.reply.text,
            conversation_id=conversation or None,
        )
    if request.context_sequence < 0:
        v.add("context_sequence", f"must be 0 or more (got {request.context_sequence})")
    v.raise_if_any()
    return reply


def release(request: pb.ReleaseMessageRequest, limits: Limits) -> int:
    """Checks a ReleaseMessage; returns its retry_after in nanoseconds (0: at once)."""
    v = Violations()
    check_id(v, "id", request.id, limits)
    check_lease_token(v, request.lease_token, required=True)
    check_reason(v, "reason", request.reason, limits)
    check_duration(
        v,
        "retry_after",
        seconds(request.retry_after),
        0.0,
        limits.max_retry_after_seconds,
        required=False,
    )
    v.raise_if_any()
    return request.retry_after.ToNanoseconds()


def extend_lease(request: pb.ExtendLeaseRequest, limits: Limits) -> int:
    """Checks an ExtendLease; returns the new lease's length in nanoseconds."""
    v = Violations()
    check_id(v, "id", request.id, limits)
    check_lease_token(v, request.lease_token, required=True)
    if not request.HasField("lease_duration"):
        v.add("lease_duration", "is required")
    else:
        check_lease_duration(v, "lease_duration", request.lease_duration, limits)
    v.raise_if_any()
    return request.lease_duration.ToNanoseconds()


# The states PurgeMessages removes: settled for good.
_PURGEABLE = {
    pb.MESSAGE_STATE_PROCESSED: "PROCESSED",
    pb.MESSAGE_STATE_DEAD: "DEAD",
    pb.MESSAGE_STATE_DELETED: "DELETED",
}


@dataclass(frozen=True)
class Purge:
    state: str
    older_than_ns: int


def purge(request: pb.PurgeMessagesRequest) -> Purge:
    v = Violations()
    state = _PURGEABLE.get(request.state)
    if state is None:
        v.add(
            "state", "must be MESSAGE_STATE_PROCESSED, MESSAGE_STATE_DEAD or MESSAGE_STATE_DELETED"
        )
    older_than_ns = 0
    if not request.HasField("older_than"):
        v.add("older_than", "is required (0 s: all of them)")
    else:
        older_than_ns = request.older_than.seconds * 1_000_000_000 + request.older_than.nanos
        if older_than_ns < 0:
            v.add("older_than", f"must not be negative (got {seconds(request.older_than):g} s)")
    v.raise_if_any()
    assert state is not None
    return Purge(state, older_than_ns)


def erase_author(request: pb.EraseAuthorRequest, limits: Limits) -> str:
    v = Violations()
    check_author(v, "author", request.author, limits)
    v.raise_if_any()
    return request.author
