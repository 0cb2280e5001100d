"""Every RPC of a live store, driven by hypothesis with hostile field values. Whatever comes in,
only the codes documented for that RPC come back (never UNKNOWN or INTERNAL), RESOURCE_EXHAUSTED
exactly when the request is over 64 KiB, every INVALID_ARGUMENT names its fields and rules, the
store stays SERVING, and its contents satisfy the state machine's invariants after each test.

The store starts with messages in every state (PENDING, LEASED to a stream held open for the
module, PROCESSED with a reply, DEAD), and the fuzzed ids are drawn partly from those, so that
calls get past validation into the repository."""

from __future__ import annotations

import base64
import unicodedata

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.contract import (
    MAX_REQUEST_BYTES,
    Code,
    call_sync,
    check_outcome,
    check_store_healthy,
)
from tests.support.harness import seconds

from . import strategies as fuzz

# Derandomized, without an example database: CI runs the same examples every time, and a failure
# prints the minimal input to replay. deadline=None because a loaded 2-core machine makes single
# calls slow now and then, which says nothing about correctness.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PENDING_IDS = [f"pending-{n}" for n in range(6)]
DEAD_ID = "dead-1"
LEASED_ID = "leased-1"
PROCESSED_ID = "processed-1"
KNOWN_IDS = [*PENDING_IDS, DEAD_ID, LEASED_ID, PROCESSED_ID, "never-created"]
CONSUMER_DEFAULT_MAX_IN_FLIGHT = 16
# Tokens shaped like the store's (hex, a colon, a sequence) that it never issued.
WELL_FORMED_TOKENS = st.builds(
    lambda hex_part, sequence: f"{hex_part}:{sequence}",
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.integers(0, 10**6),
)


def create_sync(stub, message_id: str, text: str = "hello") -> pb.Message:
    request = pb.CreateMessageRequest(message=pb.Message(id=message_id, author="ana", text=text))
    return stub.CreateMessage(request, timeout=RPC_TIMEOUT).message


def open_stream(stub, *, max_in_flight: int, lease_seconds: float):
    request = pb.StreamUnprocessedRequest(
        consumer="fuzz-fixture", max_in_flight=max_in_flight, lease_duration=seconds(lease_seconds)
    )
    # Long enough for the whole module; teardown cancels it.
    return stub.StreamUnprocessed(request, timeout=600)


def next_delivery(call) -> pb.Delivery:
    return next(call).deliveries[0]


@pytest.fixture(scope="module")
def population(sync_stub):
    """Messages in every state, made before any fuzzing so deliveries go where intended."""
    stub = sync_stub
    # DEAD: five deliveries, each released with a reason; the fifth release kills it.
    create_sync(stub, DEAD_ID)
    stream = open_stream(stub, max_in_flight=1, lease_seconds=300)
    try:
        for _ in range(5):
            delivery = next_delivery(stream)
            assert delivery.message.id == DEAD_ID
            released = stub.ReleaseMessage(
                pb.ReleaseMessageRequest(
                    id=DEAD_ID, lease_token=delivery.lease_token, reason="boom"
                ),
                timeout=RPC_TIMEOUT,
            ).message
    finally:
        stream.cancel()
    assert released.state == pb.MESSAGE_STATE_DEAD

    create_sync(stub, PROCESSED_ID)
    stub.MarkProcessed(
        pb.MarkProcessedRequest(id=PROCESSED_ID, reply=pb.Message(author="bot", text="hi")),
        timeout=RPC_TIMEOUT,
    )
    create_sync(stub, LEASED_ID)
    # Held for the whole module with one in flight, so LEASED_ID stays leased until a fuzzed
    # call settles it.
    holder = open_stream(stub, max_in_flight=1, lease_seconds=3600)
    assert next_delivery(holder).message.id == LEASED_ID
    for message_id in PENDING_IDS:
        create_sync(stub, message_id)
    yield
    holder.cancel()


@pytest.fixture(autouse=True)
def _store_healthy_afterwards(store, sync_stub, population):
    yield
    check_store_healthy(store, sync_stub)


def exercise(stub, rpc: str, request):
    """One unary call whose outcome must be one the contract allows; returns the response."""
    response, error = call_sync(stub, rpc, request)
    check_outcome(rpc, request.ByteSize(), error)
    return response


# -- one test per RPC -------------------------------------------------------------------------


@st.composite
def messages(draw: st.DrawFn) -> pb.Message:
    message = pb.Message(
        id=draw(fuzz.mostly(st.one_of(st.just(""), fuzz.valid_ids), fuzz.message_ids(KNOWN_IDS))),
        author=draw(fuzz.mostly(fuzz.valid_authors, fuzz.free_text(64))),
        text=draw(fuzz.mostly(fuzz.valid_texts, fuzz.free_text(16 * 1024))),
        reply_to=draw(fuzz.mostly(st.just(""), fuzz.message_ids(KNOWN_IDS))),
        # Output-only fields: the store must ignore them, never trust them.
        sequence=draw(fuzz.INT64),
        state=draw(fuzz.enum_values),
        delivery_attempts=draw(fuzz.INT32),
        reply_id=draw(st.one_of(st.just(""), fuzz.message_ids())),
    )
    if draw(st.booleans()):
        message.create_time.CopyFrom(draw(fuzz.timestamps()))
    if draw(st.booleans()):
        message.lease_expire_time.CopyFrom(draw(fuzz.timestamps()))
    return message


@FUZZ
@given(message=messages())
def test_create_message(sync_stub, message):
    request = pb.CreateMessageRequest(message=message)
    response = exercise(sync_stub, "CreateMessage", request)
    if response is None:
        return
    stored = response.message
    assert (stored.author, stored.text) == (message.author, message.text)
    assert stored.id == message.id or (not message.id and stored.id)
    assert not stored.reply_to
    if not response.already_existed:
        assert stored.state == pb.MESSAGE_STATE_PENDING
        # Output-only fields of the request are ignored, whatever they claimed.
        assert stored.delivery_attempts == 0
        assert not stored.reply_id
        assert not stored.HasField("lease_expire_time")


@FUZZ
@given(message_id=fuzz.message_ids(KNOWN_IDS))
def test_get_message(sync_stub, message_id):
    response = exercise(sync_stub, "GetMessage", pb.GetMessageRequest(id=message_id))
    if response is not None:
        assert response.message.id == message_id


@st.composite
def list_requests(draw: st.DrawFn) -> pb.ListMessagesRequest:
    order_by = draw(
        fuzz.mostly(
            st.sampled_from(["", "sequence", "SEQUENCE  DESC", " sequence asc ", "sequence desc"]),
            st.text(fuzz.char_or_special, max_size=20),
        )
    )
    token_order = "sequence desc" if "desc" in order_by.lower() else "sequence"
    sequence = st.one_of(
        st.integers(0, 10**6),
        fuzz.INT64,
        # Sequences past int64, and past the 4,300 digits Python will turn into an int.
        st.integers(2**63 - 2, 10**30),
        st.just("9" * 4301),
    )
    page_token = draw(
        st.one_of(
            st.just(""),
            # Shaped like the store's tokens (base64 of "order:sequence"), for any sequence.
            st.builds(
                lambda order, number: base64.urlsafe_b64encode(
                    f"{order}:{number}".encode()
                ).decode(),
                fuzz.mostly(st.just(token_order), st.sampled_from(["sequence", "", "x"])),
                sequence,
            ),
            st.text(fuzz.char_or_special, max_size=40),
        )
    )
    return pb.ListMessagesRequest(
        page_size=draw(fuzz.mostly(st.integers(0, 1000), fuzz.int32_counts)),
        page_token=page_token,
        state=draw(fuzz.mostly(st.integers(0, 4), fuzz.enum_values)),
        reply_to=draw(fuzz.mostly(st.sampled_from(["", *KNOWN_IDS]), fuzz.message_ids())),
        after_sequence=draw(
            fuzz.mostly(st.integers(0, 2**63 - 1), st.sampled_from([-1, -(2**63)]))
        ),
        order_by=order_by,
    )


@FUZZ
@given(request=list_requests())
def test_list_messages(sync_stub, request):
    response = exercise(sync_stub, "ListMessages", request)
    if response is None:
        return
    assert len(response.messages) <= (request.page_size or 100)
    for message in response.messages:
        if request.state:
            assert message.state == request.state
        if request.reply_to:
            assert message.reply_to == request.reply_to
        assert message.sequence > request.after_sequence


@FUZZ
@given(
    message_id=fuzz.mostly(st.sampled_from(KNOWN_IDS), fuzz.message_ids()),
    lease_token=fuzz.mostly(st.one_of(st.just(""), WELL_FORMED_TOKENS), fuzz.lease_tokens),
    reply=st.one_of(st.none(), messages()),
)
def test_mark_processed(sync_stub, message_id, lease_token, reply):
    request = pb.MarkProcessedRequest(id=message_id, lease_token=lease_token)
    if reply is not None:
        request.reply.CopyFrom(reply)
    response = exercise(sync_stub, "MarkProcessed", request)
    if response is None:
        return
    assert response.message.id == message_id
    assert response.message.state == pb.MESSAGE_STATE_PROCESSED
    if response.HasField("reply"):
        assert response.reply.reply_to == message_id
        assert response.reply.state == pb.MESSAGE_STATE_PROCESSED
        assert response.message.reply_id == response.reply.id
    if reply is not None and not response.already_processed:
        assert (response.reply.author, response.reply.text) == (reply.author, reply.text)


@FUZZ
@given(
    message_id=fuzz.mostly(st.sampled_from(KNOWN_IDS), fuzz.message_ids()),
    lease_token=fuzz.mostly(WELL_FORMED_TOKENS, fuzz.lease_tokens),
    reason=fuzz.mostly(
        st.text(max_size=50).filter(lambda r: "\x00" not in r), fuzz.free_text(1024)
    ),
    retry_after=st.one_of(
        st.none(), fuzz.mostly(st.builds(seconds, st.floats(0, 3600)), fuzz.durations())
    ),
)
def test_release_message_with_a_token_nobody_was_given(
    sync_stub, message_id, lease_token, reason, retry_after
):
    request = pb.ReleaseMessageRequest(id=message_id, lease_token=lease_token, reason=reason)
    if retry_after is not None:
        request.retry_after.CopyFrom(retry_after)
    exercise_settle(sync_stub, "ReleaseMessage", request)


@FUZZ
@given(
    message_id=fuzz.mostly(st.sampled_from(KNOWN_IDS), fuzz.message_ids()),
    lease_token=fuzz.mostly(WELL_FORMED_TOKENS, fuzz.lease_tokens),
    lease_duration=fuzz.mostly(st.builds(seconds, st.floats(1, 3600)), fuzz.durations()),
)
def test_extend_lease_with_a_token_nobody_was_given(
    sync_stub, message_id, lease_token, lease_duration
):
    request = pb.ExtendLeaseRequest(id=message_id, lease_token=lease_token)
    if lease_duration is not None:
        request.lease_duration.CopyFrom(lease_duration)
    exercise_settle(sync_stub, "ExtendLease", request)


def exercise_settle(stub, rpc: str, request) -> None:
    """A settling call with a token the store never issued must never succeed (tokens are 128
    random bits), and must leave the message as it was."""
    before, _ = call_sync(stub, "GetMessage", pb.GetMessageRequest(id=request.id))
    response, error = call_sync(stub, rpc, request)
    check_outcome(rpc, request.ByteSize(), error)
    assert error is not None, f"{rpc} succeeded with a made-up token: {response}"
    after, _ = call_sync(stub, "GetMessage", pb.GetMessageRequest(id=request.id))
    if before is not None and after is not None:
        # A lease may lapse meanwhile (fuzzed streams lease messages briefly), so compare only
        # what a rejected call could have touched.
        assert before.message.last_error == after.message.last_error
    if error.code() == Code.NOT_FOUND:
        assert repr(request.id) in error.details()


@FUZZ
@given(message_id=fuzz.mostly(st.sampled_from(KNOWN_IDS), fuzz.message_ids()))
def test_requeue_message(sync_stub, message_id):
    response = exercise(sync_stub, "RequeueMessage", pb.RequeueMessageRequest(id=message_id))
    if response is not None:
        assert response.message.state == pb.MESSAGE_STATE_PENDING
        assert response.message.delivery_attempts == 0


def stream_request_is_valid(request: pb.StreamUnprocessedRequest) -> bool:
    """The stream rules of docs/semantics.md, written out independently of the store's code."""
    max_in_flight = request.max_in_flight or CONSUMER_DEFAULT_MAX_IN_FLIGHT
    valid = 1 <= max_in_flight <= 1000
    if request.HasField("lease_duration"):
        lease = request.lease_duration.seconds + request.lease_duration.nanos / 1e9
        valid = valid and 1 <= lease <= 3600
    consumer = request.consumer
    return (
        valid
        and len(consumer) <= 64
        and not any(unicodedata.category(char) == "Cc" for char in consumer)
    )


@FUZZ
@given(
    consumer=fuzz.mostly(st.text(fuzz.ID_ALPHABET, max_size=64), fuzz.free_text(64)),
    max_in_flight=fuzz.mostly(st.integers(0, 1000), fuzz.int32_counts),
    lease_duration=st.one_of(
        st.none(), fuzz.mostly(st.builds(seconds, st.floats(1, 3600)), fuzz.durations())
    ),
)
def test_stream_unprocessed(sync_stub, consumer, max_in_flight, lease_duration):
    request = pb.StreamUnprocessedRequest(consumer=consumer, max_in_flight=max_in_flight)
    if lease_duration is not None:
        request.lease_duration.CopyFrom(lease_duration)
    call = sync_stub.StreamUnprocessed(request, timeout=RPC_TIMEOUT)
    try:
        if request.ByteSize() <= MAX_REQUEST_BYTES and stream_request_is_valid(request):
            # A valid stream sends its headers at once, before any work exists; a rejected one
            # would end instead (then the code below is the rejection, not CANCELLED).
            call.initial_metadata()
            call.cancel()
            assert call.code() == Code.CANCELLED, f"a valid stream was refused: {call}"
        else:
            check_outcome("StreamUnprocessed", request.ByteSize(), call)
            assert call.code() != Code.OK
    finally:
        call.cancel()


# -- idempotent and conflicting creates -------------------------------------------------------


@FUZZ
@given(
    message_id=st.sampled_from([f"dup-{n}" for n in range(4)]),
    author=st.sampled_from(["ana", "bob", "Zoë 🤖"]),
    text=st.sampled_from(["hello", "hello ", "héllo", "\U0010fffd"]),
)
def test_duplicate_and_conflicting_creates(sync_stub, message_id, author, text):
    """The stored message decides: the same author and text is a harmless retry, anything else
    is ALREADY_EXISTS and changes nothing."""
    existing, _ = call_sync(sync_stub, "GetMessage", pb.GetMessageRequest(id=message_id))
    request = pb.CreateMessageRequest(message=pb.Message(id=message_id, author=author, text=text))
    response, error = call_sync(sync_stub, "CreateMessage", request)
    if existing is None:
        assert error is None, error
        assert not response.already_existed
        return
    stored = existing.message
    if (stored.author, stored.text) == (author, text):
        assert error is None, error
        assert response.already_existed
        assert response.message.sequence == stored.sequence
    else:
        assert error is not None
        assert error.code() == Code.ALREADY_EXISTS, error
        assert repr(message_id) in error.details()
        unchanged, _ = call_sync(sync_stub, "GetMessage", pb.GetMessageRequest(id=message_id))
        assert (unchanged.message.author, unchanged.message.text) == (stored.author, stored.text)


def test_the_store_survived_every_example(store, sync_stub):
    """Runs last in this module: after every fuzzed call, the process is still the same one."""
    assert store.proc is not None
    assert store.proc.poll() is None, store.describe()
    check_store_healthy(store, sync_stub)
    with grpc.insecure_channel(store.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
