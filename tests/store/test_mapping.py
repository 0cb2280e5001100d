"""Domain -> protobuf mapping: what a field filled in place carries, and how deliveries and
results are packed into responses under the size limit."""

from __future__ import annotations

from ackbot.common.limits import MAX_RESPONSE_BYTES
from ackbot.store import mapping
from ackbot.store.models import State
from ackbot.store.types import Delivery, MarkResult, StoredMessage
from ackbot.v1 import message_store_pb2 as pb

from .conftest import SECOND_NS, START_NS


def stored(message_id: str = "m1", text: str = "hi", **fields: object) -> StoredMessage:
    values: dict[str, object] = {
        "id": message_id,
        "sequence": 1,
        "author": "alice",
        "text": text,
        "create_time_ns": None,
        "receive_time_ns": START_NS,
        "state": State.PENDING,
        "reply_to": None,
        "reply_id": None,
        "delivery_attempts": 0,
        "last_error": None,
        "lease_expire_ns": None,
        "process_time_ns": None,
    }
    values.update(fields)
    return StoredMessage(**values)  # type: ignore[arg-type]


def test_absent_values_stay_absent_and_present_ones_are_set():
    bare = mapping.message_to_proto(stored(receive_time_ns=0))
    assert bare.HasField("receive_time")  # always set, even at the epoch
    assert not bare.HasField("create_time")
    assert not bare.HasField("lease_expire_time")
    assert not bare.HasField("process_time")
    assert (bare.reply_to, bare.reply_id, bare.last_error, bare.conversation_id) == ("",) * 4

    full = mapping.message_to_proto(
        stored(
            state=State.LEASED,
            create_time_ns=START_NS - SECOND_NS,
            lease_expire_ns=START_NS + 60 * SECOND_NS,
            process_time_ns=START_NS + 1,
            reply_to="m0",
            reply_id="r1",
            last_error="boom",
            conversation_id="c1",
            delivery_attempts=2,
        )
    )
    assert full.state == pb.MESSAGE_STATE_LEASED
    assert full.create_time.ToNanoseconds() == START_NS - SECOND_NS
    assert full.lease_expire_time.ToNanoseconds() == START_NS + 60 * SECOND_NS
    assert full.process_time.ToNanoseconds() == START_NS + 1
    assert (full.reply_to, full.reply_id, full.last_error, full.conversation_id) == (
        "m0",
        "r1",
        "boom",
        "c1",
    )


def test_a_mark_filled_into_a_settlement_result_sets_its_oneof():
    result = pb.SettlementResult(correlation_id=3)
    mark = MarkResult(
        message=stored(state=State.PROCESSED, reply_id="r1"),
        reply=stored("r1", "hello", reply_to="m1", state=State.PROCESSED),
        already_processed=False,
    )
    mapping.mark_processed_response(mark, result.mark_processed)

    assert result.WhichOneof("response") == "mark_processed"
    assert result.mark_processed.reply.text == "hello"
    assert result.mark_processed.message.reply_id == "r1"


def test_responses_stay_under_the_limit_in_order_with_results_last():
    text = "x" * (300 * 1024)
    deliveries = [
        Delivery(stored(f"m{i}", text, state=State.LEASED), f"t{i}", START_NS) for i in range(7)
    ]
    results = [pb.SettlementResult(correlation_id=i) for i in range(3)]

    responses = list(mapping.delivery_responses(pb.ConsumeResponse, deliveries, results))

    assert len(responses) == 3  # three 300 KiB deliveries fit under 1 MiB, four do not
    assert all(r.ByteSize() <= MAX_RESPONSE_BYTES + 64 for r in responses)
    assert [d.message.id for r in responses for d in r.deliveries] == [f"m{i}" for i in range(7)]
    assert [d.lease_token for r in responses for d in r.deliveries] == [f"t{i}" for i in range(7)]
    assert [s.correlation_id for s in responses[-1].settlement_results] == [0, 1, 2]


def test_one_delivery_over_the_limit_still_goes_out_alone():
    big = Delivery(stored("big", "x" * (MAX_RESPONSE_BYTES + 1)), "t", START_NS)
    small = Delivery(stored("small"), "t", START_NS)

    responses = list(mapping.delivery_responses(pb.StreamUnprocessedResponse, [big, small]))

    assert [[d.message.id for d in r.deliveries] for r in responses] == [["big"], ["small"]]


def test_a_page_ends_before_it_outgrows_a_response():
    text = "x" * (400 * 1024)
    response = pb.ListMessagesResponse()
    mapping.fill_page(response, [stored(f"m{i}", text) for i in range(5)])

    assert [m.id for m in response.messages] == ["m0", "m1"]


def test_a_page_token_reads_back_for_its_order_only():
    token = mapping.encode_page_token(42, "sequence desc")
    assert mapping.decode_page_token(token, "sequence desc") == 42
    assert mapping.decode_page_token(token, "sequence") is None
    assert mapping.decode_page_token("not base64!", "sequence") is None
    too_big = mapping.encode_page_token(2**63, "sequence")
    assert mapping.decode_page_token(too_big, "sequence") is None
