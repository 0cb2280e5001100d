"""Every rejection the store can produce, one row each, asserted once: the status code; for
INVALID_ARGUMENT the field in the google.rpc.BadRequest details and in the message text, with the
rule it broke, and no ErrorInfo; for the domain errors the message id and the state in the text
and the google.rpc.ErrorInfo reason a caller branches on. Every row also checks that the request
changed nothing and that the store still serves.

The rows were enumerated from services/store/validation.py and servicer.py (each `v.add` and
each check_* call site) and the repository's domain errors. The rejections that need a scene
(a live lease, a lapsed one, a request over the size limit) are in test_bad_input.py and
test_error_info.py; storage errors in test_error_info.py and the reliability tests, which can
break a database on purpose."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import timestamp_pb2

from ackbot.store.errors import ERROR_DOMAIN
from ackbot.testing import RPC_TIMEOUT, store_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.contract import Code, error_info, field_violations, list_everything
from tests.support.harness import seconds

PENDING_ID = "table-pending"
MISSING_ID = "no-such-message"
ID_CHARS_RULE = "may contain only the characters A-Z a-z 0-9 . _ : ~ -"
TOKEN_RULE = "must be at most 64 printable ASCII characters, as issued with a delivery"
CONTROL_RULE = "must not contain control characters"
TEXT_CONTROL_RULE = (
    "must not contain control characters other than tab, line feed and carriage return"
)
TIME_RULE = "must be between 1677-09-21 and 2262-04-11 (64-bit nanoseconds)"


@dataclass(frozen=True)
class Rejection:
    name: str
    rpc: str
    request: object
    code: grpc.StatusCode
    # For INVALID_ARGUMENT: the field the BadRequest names. Otherwise a text the message must
    # contain (the id, the state).
    field: str
    rule: str
    # For the domain errors: the google.rpc.ErrorInfo reason, and the id in its metadata.
    reason: str = ""
    message_id: str = ""


def invalid(name, rpc, request, field, rule) -> Rejection:
    return Rejection(name, rpc, request, Code.INVALID_ARGUMENT, field, rule)


def domain(name, rpc, request, code, message_id, rule, reason) -> Rejection:
    return Rejection(name, rpc, request, code, repr(message_id), rule, reason, message_id)


def message(**fields) -> pb.Message:
    return pb.Message(**{"author": "ana", "text": "hello", **fields})


def create(**fields) -> pb.CreateMessageRequest:
    return pb.CreateMessageRequest(message=message(**fields))


def create_at(seconds_: int, nanos: int) -> pb.CreateMessageRequest:
    return create(create_time=timestamp_pb2.Timestamp(seconds=seconds_, nanos=nanos))


def mark(**fields) -> pb.MarkProcessedRequest:
    return pb.MarkProcessedRequest(**{"id": PENDING_ID, **fields})


def release(**fields) -> pb.ReleaseMessageRequest:
    return pb.ReleaseMessageRequest(**{"id": PENDING_ID, "lease_token": "t", **fields})


def extend(**fields) -> pb.ExtendLeaseRequest:
    return pb.ExtendLeaseRequest(
        **{"id": PENDING_ID, "lease_token": "t", "lease_duration": seconds(60), **fields}
    )


def stream(**fields) -> pb.StreamUnprocessedRequest:
    return pb.StreamUnprocessedRequest(**fields)


def listing(**fields) -> pb.ListMessagesRequest:
    return pb.ListMessagesRequest(**fields)


def page_token_of(text: str) -> str:
    """A token shaped like the store's (base64 of "order:sequence"), for a sequence that no
    message can have: a client that edits tokens gets INVALID_ARGUMENT, like any bad token."""
    return base64.urlsafe_b64encode(text.encode()).decode()


# Stands for a ListMessagesRequest whose page_token the store issued for "sequence desc".
OTHER_ORDER_TOKEN = object()

# Besides "a/b" (the id rows above): a space, a non-ASCII letter, a tab, a semicolon, a "!".
OTHER_BAD_ID_CHARS = ("has space", "caf\u00e9", "tab\there", "semi;colon", "no!")

ID_RPCS = {
    "GetMessage": lambda message_id: pb.GetMessageRequest(id=message_id),
    "MarkProcessed": lambda message_id: mark(id=message_id),
    "ReleaseMessage": lambda message_id: release(id=message_id),
    "ExtendLease": lambda message_id: extend(id=message_id),
    "RequeueMessage": lambda message_id: pb.RequeueMessageRequest(id=message_id),
    "DeleteMessage": lambda message_id: pb.DeleteMessageRequest(id=message_id),
    "ApproveMessage": lambda message_id: pb.ApproveMessageRequest(id=message_id),
}

REJECTIONS = [
    # check_id: required, length, characters; on every field that holds an id.
    *[
        invalid(f"{rpc}: id empty", rpc, make(""), "id", "is required")
        for rpc, make in ID_RPCS.items()
    ],
    *[
        invalid(
            f"{rpc}: id 129", rpc, make("i" * 129), "id", "must be at most 128 characters (got 129)"
        )
        for rpc, make in ID_RPCS.items()
    ],
    *[
        invalid(f"{rpc}: id chars", rpc, make("a/b"), "id", ID_CHARS_RULE)
        for rpc, make in ID_RPCS.items()
    ],
    invalid(
        "create: id 129",
        "CreateMessage",
        create(id="i" * 129),
        "message.id",
        "at most 128 characters (got 129)",
    ),
    invalid(
        "create: id chars", "CreateMessage", create(id="\U0001f916"), "message.id", ID_CHARS_RULE
    ),
    invalid(
        "list: reply_to 129",
        "ListMessages",
        listing(reply_to="r" * 129),
        "reply_to",
        "at most 128 characters (got 129)",
    ),
    invalid(
        "list: reply_to chars", "ListMessages", listing(reply_to="a b"), "reply_to", ID_CHARS_RULE
    ),
    # check_author: required, length (characters, not bytes), control characters.
    invalid(
        "create: author empty", "CreateMessage", create(author=""), "message.author", "is required"
    ),
    invalid(
        "create: author 65",
        "CreateMessage",
        create(author="\u00e9" * 65),
        "message.author",
        "must be at most 64 characters (got 65)",
    ),
    invalid(
        "create: author DEL",
        "CreateMessage",
        create(author="a\x7f"),
        "message.author",
        f"{CONTROL_RULE} (found U+007F)",
    ),
    invalid(
        "create: author NEL",
        "CreateMessage",
        create(author="a\x85"),
        "message.author",
        f"{CONTROL_RULE} (found U+0085)",
    ),
    invalid(
        "mark: reply author empty",
        "MarkProcessed",
        mark(reply=pb.Message(text="t")),
        "reply.author",
        "is required",
    ),
    invalid(
        "mark: reply author 65",
        "MarkProcessed",
        mark(reply=pb.Message(author="b" * 65, text="t")),
        "reply.author",
        "at most 64 characters (got 65)",
    ),
    invalid(
        "mark: reply author tab",
        "MarkProcessed",
        mark(reply=pb.Message(author="b\tc", text="t")),
        "reply.author",
        f"{CONTROL_RULE} (found U+0009)",
    ),
    # check_text: required, UTF-8 bytes, control characters other than \t \n \r.
    invalid("create: text empty", "CreateMessage", create(text=""), "message.text", "is required"),
    invalid(
        "create: text 16 KiB + 1 of 4-byte UTF-8",
        "CreateMessage",
        create(text="\U0001f916" * 4096 + "x"),
        "message.text",
        "must be at most 16384 bytes of UTF-8 (got 16385)",
    ),
    invalid(
        "create: text NUL",
        "CreateMessage",
        create(text="a\x00"),
        "message.text",
        f"{TEXT_CONTROL_RULE} (found U+0000)",
    ),
    invalid(
        "mark: reply text empty",
        "MarkProcessed",
        mark(reply=pb.Message(author="b")),
        "reply.text",
        "is required",
    ),
    invalid(
        "mark: reply text 16385",
        "MarkProcessed",
        mark(reply=pb.Message(author="b", text="r" * 16385)),
        "reply.text",
        "at most 16384 bytes of UTF-8 (got 16385)",
    ),
    invalid(
        "mark: reply text ESC",
        "MarkProcessed",
        mark(reply=pb.Message(author="b", text="\x1b[2J")),
        "reply.text",
        f"{TEXT_CONTROL_RULE} (found U+001B)",
    ),
    # CreateMessage's own rules.
    invalid(
        "create: reply_to set",
        "CreateMessage",
        create(reply_to=PENDING_ID),
        "message.reply_to",
        "must be empty; replies are stored by MarkProcessed",
    ),
    invalid(
        "create: create_time after 2262",
        "CreateMessage",
        create_at(10**10, 0),
        "message.create_time",
        TIME_RULE,
    ),
    invalid(
        "create: create_time before 1677",
        "CreateMessage",
        create_at(-(10**10), 0),
        "message.create_time",
        TIME_RULE,
    ),
    invalid(
        "create: create_time 1 ns past 2262-04-11",
        "CreateMessage",
        create_at(9_223_372_036, 854_775_808),
        "message.create_time",
        TIME_RULE,
    ),
    # Out of the range protobuf's Timestamp itself allows (years 1-9999, nanos 0-999999999).
    invalid(
        "create: create_time nanos -1",
        "CreateMessage",
        create_at(0, -1),
        "message.create_time",
        "nanos must be 0 to 999999999 (got -1)",
    ),
    invalid(
        "create: create_time nanos 10^9",
        "CreateMessage",
        create_at(0, 10**9),
        "message.create_time",
        "nanos must be 0 to 999999999 (got 1000000000)",
    ),
    invalid(
        "create: create_time year 10000",
        "CreateMessage",
        create_at(253_402_300_800, 0),
        "message.create_time",
        TIME_RULE,
    ),
    # ListMessages.
    invalid(
        "list: page_size min int32",
        "ListMessages",
        listing(page_size=-(2**31)),
        "page_size",
        f"must be 0 or more (got {-(2**31)})",
    ),
    invalid(
        "list: after_sequence -1",
        "ListMessages",
        listing(after_sequence=-1),
        "after_sequence",
        "must be 0 or more (got -1)",
    ),
    invalid(
        "list: order_by",
        "ListMessages",
        listing(order_by="sequence descending"),
        "order_by",
        'must be "sequence" or "sequence desc"',
    ),
    invalid(
        "list: page_token garbage",
        "ListMessages",
        listing(page_token="%%%"),
        "page_token",
        "is not a next_page_token returned by ListMessages for this order_by",
    ),
    # A real token, made for newest first, then used oldest first (filled in by the test).
    invalid(
        "list: page_token of the other order",
        "ListMessages",
        OTHER_ORDER_TOKEN,
        "page_token",
        "for this order_by",
    ),
    invalid(
        "list: page_token past int64",
        "ListMessages",
        listing(page_token=page_token_of(f"sequence:{2**63}")),
        "page_token",
        "for this order_by",
    ),
    invalid(
        "list: page_token of 5000 digits",
        "ListMessages",
        listing(order_by="sequence desc", page_token=page_token_of("sequence desc:" + "9" * 5000)),
        "page_token",
        "for this order_by",
    ),
    invalid(
        "list: state 7",
        "ListMessages",
        listing(state=7),
        "state",
        "must be one of the MessageState values (got 7)",
    ),
    # lease_token: required by Release and Extend, optional for Mark; 64 printable ASCII at most.
    invalid(
        "release: token empty",
        "ReleaseMessage",
        release(lease_token=""),
        "lease_token",
        "is required",
    ),
    invalid(
        "extend: token empty", "ExtendLease", extend(lease_token=""), "lease_token", "is required"
    ),
    invalid(
        "release: token 65",
        "ReleaseMessage",
        release(lease_token="t" * 65),
        "lease_token",
        TOKEN_RULE,
    ),
    invalid(
        "extend: token non-ASCII",
        "ExtendLease",
        extend(lease_token="t\u00e9"),
        "lease_token",
        TOKEN_RULE,
    ),
    invalid(
        "mark: token unprintable",
        "MarkProcessed",
        mark(lease_token="t\x01"),
        "lease_token",
        TOKEN_RULE,
    ),
    invalid(
        "mark: token with a newline",
        "MarkProcessed",
        mark(lease_token="t\n"),
        "lease_token",
        TOKEN_RULE,
    ),
    # ReleaseMessage.
    invalid(
        "release: reason 1025",
        "ReleaseMessage",
        release(reason="e" * 1025),
        "reason",
        "must be at most 1024 characters (got 1025)",
    ),
    invalid(
        "release: reason NUL",
        "ReleaseMessage",
        release(reason="\x00"),
        "reason",
        "must not contain NUL (U+0000)",
    ),
    invalid(
        "release: retry_after -1 ns",
        "ReleaseMessage",
        release(retry_after=seconds(-1e-9)),
        "retry_after",
        "must be between 0 s and 3600 s (got -1e-09 s)",
    ),
    invalid(
        "release: retry_after 3601",
        "ReleaseMessage",
        release(retry_after=seconds(3601)),
        "retry_after",
        "must be between 0 s and 3600 s (got 3601 s)",
    ),
    # Lease durations: required by ExtendLease, optional on a stream, 1 s to 1 h.
    invalid(
        "extend: lease missing",
        "ExtendLease",
        pb.ExtendLeaseRequest(id=PENDING_ID, lease_token="t"),
        "lease_duration",
        "is required",
    ),
    invalid(
        "extend: lease 0.999",
        "ExtendLease",
        extend(lease_duration=seconds(0.999)),
        "lease_duration",
        "must be between 1 s and 3600 s (got 0.999 s)",
    ),
    invalid(
        "stream: lease 3600.5",
        "StreamUnprocessed",
        stream(lease_duration=seconds(3600.5)),
        "lease_duration",
        "must be between 1 s and 3600 s (got 3600.5 s)",
    ),
    # StreamUnprocessed.
    invalid(
        "stream: max_in_flight 1001",
        "StreamUnprocessed",
        stream(max_in_flight=1001),
        "max_in_flight",
        "must be between 1 and 1000 (got 1001)",
    ),
    invalid(
        "stream: max_in_flight -1",
        "StreamUnprocessed",
        stream(max_in_flight=-1),
        "max_in_flight",
        "must be between 1 and 1000 (got -1)",
    ),
    invalid(
        "stream: consumer 65",
        "StreamUnprocessed",
        stream(consumer="c" * 65),
        "consumer",
        "must be at most 64 characters (got 65)",
    ),
    invalid(
        "stream: consumer CR",
        "StreamUnprocessed",
        stream(consumer="bot\rFAKE"),
        "consumer",
        f"{CONTROL_RULE} (found U+000D)",
    ),
    # Domain errors: the message names the id (NOT_FOUND, ALREADY_EXISTS) or the state.
    *[
        domain(
            f"{rpc}: unknown id",
            rpc,
            make(MISSING_ID),
            Code.NOT_FOUND,
            MISSING_ID,
            "not found",
            "MESSAGE_NOT_FOUND",
        )
        for rpc, make in ID_RPCS.items()
    ],
    domain(
        "create: id taken, other text",
        "CreateMessage",
        create(id=PENDING_ID, text="other"),
        Code.ALREADY_EXISTS,
        PENDING_ID,
        "different author or text",
        "ID_TAKEN",
    ),
    *[
        domain(
            f"{rpc}: not the lease",
            rpc,
            make(PENDING_ID),
            Code.FAILED_PRECONDITION,
            PENDING_ID,
            "lease_token is not the current lease",
            "LEASE_NOT_CURRENT",
        )
        for rpc, make in ID_RPCS.items()
        if rpc in ("ReleaseMessage", "ExtendLease")
    ],
    domain(
        "requeue: not DEAD",
        "RequeueMessage",
        pb.RequeueMessageRequest(id=PENDING_ID),
        Code.FAILED_PRECONDITION,
        PENDING_ID,
        "only DEAD messages can be requeued",
        "NOT_DEAD",
    ),
    domain(
        "approve: not HELD",
        "ApproveMessage",
        pb.ApproveMessageRequest(id=PENDING_ID),
        Code.FAILED_PRECONDITION,
        PENDING_ID,
        "only HELD messages can be approved",
        "NOT_HELD",
    ),
    # More inputs that break the rules above, each its own way (a character class, a boundary
    # from the other side, another unit).
    *[
        invalid(f"{rpc}: id {bad!r}", rpc, make(bad), "id", ID_CHARS_RULE)
        for rpc, make in ID_RPCS.items()
        for bad in OTHER_BAD_ID_CHARS
    ],
    *[
        invalid(f"create: id {bad!r}", "CreateMessage", create(id=bad), "message.id", ID_CHARS_RULE)
        for bad in OTHER_BAD_ID_CHARS
    ],
    invalid(
        "create: author 65 ASCII",
        "CreateMessage",
        create(author="a" * 65),
        "message.author",
        "must be at most 64 characters (got 65)",
    ),
    invalid(
        "create: author newline",
        "CreateMessage",
        create(author="a\nb"),
        "message.author",
        f"{CONTROL_RULE} (found U+000A)",
    ),
    invalid(
        "create: text 16 KiB + 1 ASCII",
        "CreateMessage",
        create(text="x" * (16 * 1024 + 1)),
        "message.text",
        "must be at most 16384 bytes of UTF-8 (got 16385)",
    ),
    invalid(
        "create: text 16 KiB + 2 of 2-byte UTF-8",
        "CreateMessage",
        create(text="\u00e9" * 8193),
        "message.text",
        "must be at most 16384 bytes of UTF-8 (got 16386)",
    ),
    invalid(
        "create: text bell",
        "CreateMessage",
        create(text="ding\x07"),
        "message.text",
        f"{TEXT_CONTROL_RULE} (found U+0007)",
    ),
    invalid(
        "mark: reply text NUL",
        "MarkProcessed",
        mark(reply=pb.Message(author="b", text="\x00")),
        "reply.text",
        f"{TEXT_CONTROL_RULE} (found U+0000)",
    ),
    invalid(
        "list: state 99",
        "ListMessages",
        listing(state=99),
        "state",
        "must be one of the MessageState values (got 99)",
    ),
    invalid(
        "list: state -1",
        "ListMessages",
        listing(state=-1),
        "state",
        "must be one of the MessageState values (got -1)",
    ),
    invalid(
        "list: page_token not base64 of a position",
        "ListMessages",
        listing(page_token="not-a-token"),
        "page_token",
        "for this order_by",
    ),
    invalid(
        "list: page_size -1",
        "ListMessages",
        listing(page_size=-1),
        "page_size",
        "must be 0 or more (got -1)",
    ),
    invalid(
        "list: order_by another field",
        "ListMessages",
        listing(order_by="create_time desc"),
        "order_by",
        'must be "sequence" or "sequence desc"',
    ),
    *[
        invalid(
            f"stream: lease {duration} s",
            "StreamUnprocessed",
            stream(lease_duration=seconds(duration)),
            "lease_duration",
            f"must be between 1 s and 3600 s (got {duration:g} s)",
        )
        for duration in (0, 0.5, 3601, -5)
    ],
    invalid(
        "stream: consumer newline",
        "StreamUnprocessed",
        stream(consumer="bot\nFAKE LOG LINE"),
        "consumer",
        f"{CONTROL_RULE} (found U+000A)",
    ),
    invalid(
        "release: retry_after -1 s",
        "ReleaseMessage",
        release(retry_after=seconds(-1)),
        "retry_after",
        "must be between 0 s and 3600 s (got -1 s)",
    ),
    *[
        invalid(
            f"extend: lease {duration} s",
            "ExtendLease",
            extend(lease_duration=seconds(duration)),
            "lease_duration",
            f"must be between 1 s and 3600 s (got {duration:g} s)",
        )
        for duration in (0, 3601)
    ],
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the whole table: a process per row would dominate the run.
    service = store_service(tmp_path_factory.mktemp("rejections"))
    try:
        yield service.start().wait_ready()
    finally:
        service.cleanup()


@pytest.fixture(scope="module")
def stub(store):
    with grpc.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(id=PENDING_ID, author="ana", text="hello")),
            timeout=RPC_TIMEOUT,
        )
        yield stub


def token_for_the_other_order(stub) -> pb.ListMessagesRequest:
    newest = stub.ListMessages(
        pb.ListMessagesRequest(page_size=1, order_by="sequence desc"), timeout=RPC_TIMEOUT
    )
    assert newest.next_page_token, "the fixture's message makes a full first page"
    return pb.ListMessagesRequest(page_token=newest.next_page_token, order_by="sequence")


def rejected(stub, rpc: str, request) -> grpc.RpcError:
    if request is OTHER_ORDER_TOKEN:
        request = token_for_the_other_order(stub)
    if rpc == "StreamUnprocessed":
        call = stub.StreamUnprocessed(request, timeout=RPC_TIMEOUT)
        try:
            # Blocks until the stream ends: a rejected stream ends at once, a valid one would
            # run into RPC_TIMEOUT and fail the code assertion below.
            call.code()
        finally:
            call.cancel()
        return call
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, rpc)(request, timeout=RPC_TIMEOUT)
    return caught.value


def snapshot(stub) -> list[bytes]:
    """The store's whole contents, to compare before and after a rejected request."""
    return [m.SerializeToString(deterministic=True) for m in list_everything(stub)]


@pytest.mark.parametrize("case", REJECTIONS, ids=[r.name for r in REJECTIONS])
def test_rejection_names_the_field_and_the_rule_and_changes_nothing(store, stub, case: Rejection):
    before = snapshot(stub)
    error = rejected(stub, case.rpc, case.request)
    assert error.code() == case.code, error
    check_rejection(error, case)
    assert snapshot(stub) == before, "a rejected request changed the store"
    assert store.is_serving("ackbot.v1.MessageStore")


def check_rejection(error: grpc.RpcError, case: Rejection) -> None:
    text = error.details()
    info = error_info(error)
    if case.code != Code.INVALID_ARGUMENT:
        assert case.field in text, error
        assert case.rule in text, error
        assert info is not None, f"no ErrorInfo: {error}"
        assert (info.reason, info.domain) == (case.reason, ERROR_DOMAIN), info
        assert dict(info.metadata) == {"message_id": case.message_id}, info
        return
    # A bad request is the caller's to fix, field by field: no reason to branch on.
    assert info is None, info
    rules = {v.description for v in field_violations(error) if v.field == case.field}
    assert rules, f"the BadRequest does not name {case.field}: {error}"
    assert any(case.rule in rule for rule in rules), f"{case.rule!r} not in {rules}"
    # The message text alone says it too, as "field: rule", for whoever reads only a log line.
    assert any(f"{case.field}: {rule}" in text for rule in rules), text


# Bytes that do not decode as the RPC's request: a string field holding the UTF-8 encoding of a
# lone surrogate (which a protobuf client refuses to send, so it is built by hand), and a field
# that claims 100 bytes when 1 follows.
SURROGATE_IN_FIRST_STRING = {
    "CreateMessage": b"\x0a\x05\x12\x03\xed\xa0\x80",  # message.author
    "GetMessage": b"\x0a\x03\xed\xa0\x80",  # id
    "ListMessages": b"\x12\x03\xed\xa0\x80",  # page_token
    "MarkProcessed": b"\x0a\x03\xed\xa0\x80",  # id
    "StreamUnprocessed": b"\x0a\x03\xed\xa0\x80",  # consumer
    "ReleaseMessage": b"\x1a\x03\xed\xa0\x80",  # reason
    "ExtendLease": b"\x12\x03\xed\xa0\x80",  # lease_token
    "RequeueMessage": b"\x0a\x03\xed\xa0\x80",  # id
    "DeleteMessage": b"\x0a\x03\xed\xa0\x80",  # id
    "ApproveMessage": b"\x0a\x03\xed\xa0\x80",  # id
}
TRUNCATED = b"\x0a\x64\x00"


def raw_call(channel: grpc.Channel, rpc: str, payload: bytes) -> grpc.RpcError:
    method = f"/ackbot.v1.MessageStore/{rpc}"
    identity = {"request_serializer": bytes, "response_deserializer": bytes}
    if rpc == "StreamUnprocessed":
        call = channel.unary_stream(method, **identity)(payload, timeout=RPC_TIMEOUT)
        try:
            call.code()
        finally:
            call.cancel()
        return call
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method, **identity)(payload, timeout=RPC_TIMEOUT)
    return caught.value


@pytest.mark.parametrize("payload", ["surrogate", "truncated"])
@pytest.mark.parametrize("rpc", list(SURROGATE_IN_FIRST_STRING))
def test_undecodable_request_names_the_request_and_its_type(store, stub, rpc, payload):
    data = SURROGATE_IN_FIRST_STRING[rpc] if payload == "surrogate" else TRUNCATED
    before = snapshot(stub)
    with grpc.insecure_channel(store.address) as channel:
        error = raw_call(channel, rpc, data)
    assert snapshot(stub) == before, "a request that did not decode changed the store"
    assert error.code() == Code.INVALID_ARGUMENT, error
    rules = [v.description for v in field_violations(error) if v.field == "request"]
    assert rules, error
    assert f"is not a valid ackbot.v1.{rpc}Request" in rules[0]
    assert f"request: {rules[0]}" in error.details()


def test_every_rejection_rule_of_the_store_has_a_row():
    """A guard against this table falling behind the code: every rule text the servicer and
    validation can produce appears in some row (the texts are copied from the code on purpose,
    so a reworded rule shows up here as well as in the row)."""
    covered = " | ".join(r.rule for r in REJECTIONS)
    for rule in (
        "is required",
        "must be at most 128 characters",
        ID_CHARS_RULE,
        "must be at most 64 characters",
        CONTROL_RULE,
        "bytes of UTF-8",
        TEXT_CONTROL_RULE,
        "must be at most 1024 characters",
        "must not contain NUL",
        TIME_RULE,
        "nanos must be 0 to 999999999",
        "must be between 1 s and 3600 s",
        "must be between 0 s and 3600 s",
        "must be between 1 and 1000",
        "must be empty; replies are stored by MarkProcessed",
        "must be 0 or more",
        'must be "sequence" or "sequence desc"',
        "is not a next_page_token",
        "must be one of the MessageState values",
        TOKEN_RULE,
        "not found",
        "different author or text",
        "lease_token is not the current lease",
        "only DEAD messages can be requeued",
        "only HELD messages can be approved",
    ):
        assert rule in covered, rule
