"""Consume, the bidirectional session: settlements on the stream answered one by one with the
unary calls' codes, drain, flow control, the session's end, and its refusals. The settling
contract itself (idempotency, leases, error details) runs on both paths in the contract tests
through the `settler` fixture."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from ackbot.common.limits import REPLY_LIMIT_METADATA
from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import (
    ConsumeSession,
    StreamReader,
    bad_request_fields,
    check_answered_once,
    count_state,
    create,
    create_many,
    get,
    list_all,
    seconds,
    status_bad_request_fields,
    wait_settled,
    wait_state,
)

# Deliveries are pushed within milliseconds, so a wrong one would show up well inside this.
QUIET_WINDOW = 1.0


def _reason(status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def _mark(delivery, text: str = "") -> pb.MarkProcessedRequest:
    request = pb.MarkProcessedRequest(id=delivery.message.id, lease_token=delivery.lease_token)
    if text:
        request.reply.CopyFrom(pb.Message(author="session-bot", text=text))
    return request


async def test_settlements_in_one_frame_are_answered_each_with_its_own_code(stub):
    for n in range(4):
        await create(stub, f"question {n}", id=f"frame-{n}")
    session = ConsumeSession(stub, consumer="framer", max_in_flight=4, lease_seconds=60)
    try:
        headers = await asyncio.wait_for(session.call.initial_metadata(), RPC_TIMEOUT)
        assert dict(headers)[REPLY_LIMIT_METADATA] == "16384"
        d = {x.message.id: x for x in [await session.next() for _ in range(4)]}
        # frame-0 is already processed when the frame comes.
        await stub.MarkProcessed(_mark(d["frame-0"], "first"), timeout=RPC_TIMEOUT)
        s = session.settlement
        settlements = [
            s(mark_processed=_mark(d["frame-0"], "second")),
            s(mark_processed=_mark(d["frame-1"], "answer one")),
            s(release=pb.ReleaseMessageRequest(id="frame-2", lease_token="not-the-lease")),
            s(release=pb.ReleaseMessageRequest(id="no-such-message", lease_token="t")),
            s(
                extend_lease=pb.ExtendLeaseRequest(
                    id="frame-3", lease_token=d["frame-3"].lease_token, lease_duration=seconds(90)
                )
            ),
            s(mark_processed=pb.MarkProcessedRequest(id="bad id!")),
            s(),
        ]
        already, answered, wrong_lease, missing, extended, invalid, empty = await session.settle(
            *settlements
        )
        assert [r.correlation_id for r in (already, answered, extended)] == [
            settlements[0].correlation_id,
            settlements[1].correlation_id,
            settlements[4].correlation_id,
        ]

        assert already.status.code == code_pb2.OK
        assert already.mark_processed.already_processed
        assert already.mark_processed.reply.text == "first"

        assert answered.status.code == code_pb2.OK
        assert not answered.mark_processed.already_processed
        assert answered.mark_processed.reply.text == "answer one"
        assert answered.mark_processed.message.state == pb.MESSAGE_STATE_PROCESSED

        assert wrong_lease.status.code == code_pb2.FAILED_PRECONDITION
        assert _reason(wrong_lease.status) == "LEASE_NOT_CURRENT"
        assert not wrong_lease.HasField("release")

        assert missing.status.code == code_pb2.NOT_FOUND
        assert _reason(missing.status) == "MESSAGE_NOT_FOUND"
        assert "no-such-message" in missing.status.message

        assert extended.status.code == code_pb2.OK
        assert extended.extend_lease.message.state == pb.MESSAGE_STATE_LEASED

        assert invalid.status.code == code_pb2.INVALID_ARGUMENT
        assert status_bad_request_fields(invalid.status) == ["id"]
        assert empty.status.code == code_pb2.INVALID_ARGUMENT
        assert status_bad_request_fields(empty.status) == ["action"]

        # The session goes on: frame-2's lease is still good on it.
        (released,) = await session.settle(
            s(release=pb.ReleaseMessageRequest(id="frame-2", lease_token=d["frame-2"].lease_token))
        )
        assert released.status.code == code_pb2.OK
        assert released.release.message.delivery_attempts == 0
        assert (await get(stub, "frame-1")).state == pb.MESSAGE_STATE_PROCESSED
        assert await session.half_close() == grpc.StatusCode.OK
    finally:
        await session.close()


async def test_a_settled_delivery_frees_its_slot_on_the_session(stub):
    for n in range(3):
        await create(stub, f"work {n}", id=f"slot-{n}")
    session = ConsumeSession(stub, consumer="slots", max_in_flight=1, lease_seconds=60)
    try:
        for n in range(3):
            delivery = await session.next()
            assert delivery.message.id == f"slot-{n}"
            await session.expect_nothing(0.3)
            (result,) = await session.settle(
                session.settlement(mark_processed=_mark(delivery, f"answer {n}"))
            )
            assert result.status.code == code_pb2.OK
        assert await count_state(stub, pb.MESSAGE_STATE_PROCESSED) == 6  # 3 + their replies
    finally:
        await session.close()


async def test_drain_stops_deliveries_but_settlements_still_work(stub):
    for n in range(4):
        await create(stub, f"before drain {n}", id=f"drain-{n}")
    session = ConsumeSession(stub, consumer="drainer", max_in_flight=2, lease_seconds=60)
    try:
        held = [await session.next(), await session.next()]
        session.send(pb.ConsumeRequest(drain=True))
        # Settling makes room, and more work arrives: neither brings a delivery now.
        results = await session.settle(
            *(session.settlement(mark_processed=_mark(d, "done")) for d in held)
        )
        assert [r.status.code for r in results] == [code_pb2.OK, code_pb2.OK]
        await create(stub, "after drain", id="drain-late")
        await session.expect_nothing(QUIET_WINDOW)
        assert await count_state(stub, pb.MESSAGE_STATE_LEASED) == 0
        # A raised window does not undo the drain.
        session.send(pb.ConsumeRequest(max_in_flight=10))
        await session.expect_nothing(QUIET_WINDOW)
        assert await session.half_close() == grpc.StatusCode.OK
        # The rest never spent an attempt here.
        for message_id in ("drain-2", "drain-3", "drain-late"):
            message = await get(stub, message_id)
            assert message.state == pb.MESSAGE_STATE_PENDING
            assert message.delivery_attempts == 0
    finally:
        await session.close()


async def test_the_window_can_be_raised_and_lowered(stub):
    ids = [f"window-{n}" for n in range(6)]
    for message_id in ids:
        await create(stub, f"text of {message_id}", id=message_id)
    session = ConsumeSession(stub, consumer="window", max_in_flight=1, lease_seconds=60)
    try:
        first = await session.next()
        await session.expect_nothing(QUIET_WINDOW)
        session.send(pb.ConsumeRequest(max_in_flight=3))
        more = [await session.next(), await session.next()]
        assert [d.message.id for d in [first, *more]] == ids[:3]
        await session.expect_nothing(QUIET_WINDOW)

        # Lowered to 1 with 3 out: settling two brings nothing, the third brings one.
        session.send(pb.ConsumeRequest(max_in_flight=1))
        for delivery in (first, more[0]):
            (result,) = await session.settle(session.settlement(mark_processed=_mark(delivery)))
            assert result.status.code == code_pb2.OK
        await session.expect_nothing(QUIET_WINDOW)
        (result,) = await session.settle(session.settlement(mark_processed=_mark(more[1])))
        assert result.status.code == code_pb2.OK
        assert (await session.next()).message.id == ids[3]
        await session.expect_nothing(QUIET_WINDOW)
    finally:
        await session.close()


@pytest.mark.parametrize("how", ["cancel", "half_close"])
async def test_the_sessions_end_releases_its_leases(stub, how):
    await create(stub, "held", id=f"end-{how}")
    session = ConsumeSession(stub, consumer="ender", max_in_flight=1, lease_seconds=300)
    delivery = await session.next()
    if how == "cancel":
        await session.close()
    else:
        assert await session.half_close() == grpc.StatusCode.OK
        await session.close()
    # Released at once, far before the 300 s lease: the attempt stays counted.
    message = await wait_state(stub, delivery.message.id, pb.MESSAGE_STATE_PENDING, within=10)
    assert message.delivery_attempts == 1
    reader = StreamReader(stub, consumer="next", max_in_flight=1)
    try:
        again = await reader.next()
        assert again.message.id == delivery.message.id
        assert again.attempt == 2
    finally:
        await reader.close()


BAD_FIRST_REQUESTS = {
    "no open": (pb.ConsumeRequest(max_in_flight=2), "open"),
    "window": (
        pb.ConsumeRequest(open=pb.StreamUnprocessedRequest(max_in_flight=5000)),
        "open.max_in_flight",
    ),
    "lease": (
        pb.ConsumeRequest(open=pb.StreamUnprocessedRequest(lease_duration=seconds(0.1))),
        "open.lease_duration",
    ),
    "consumer": (
        pb.ConsumeRequest(open=pb.StreamUnprocessedRequest(consumer="x" * 65)),
        "open.consumer",
    ),
    "flow control": (
        pb.ConsumeRequest(open=pb.StreamUnprocessedRequest(), max_in_flight=-1),
        "max_in_flight",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FIRST_REQUESTS))
async def test_a_bad_first_request_is_invalid_argument_naming_the_field(stub, case):
    await create(stub, "bystander", id="bystander")
    request, field = BAD_FIRST_REQUESTS[case]

    async def requests():
        yield request

    call = stub.Consume(requests(), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == [field]
    assert (await get(stub, "bystander")).delivery_attempts == 0


@pytest.mark.parametrize(
    ("later", "field"),
    [
        (pb.ConsumeRequest(open=pb.StreamUnprocessedRequest()), "open"),
        (pb.ConsumeRequest(max_in_flight=1001), "max_in_flight"),
    ],
)
async def test_a_bad_later_request_ends_the_session_and_releases(stub, later, field):
    await create(stub, "to hold", id="later-1")
    session = ConsumeSession(stub, consumer="later", max_in_flight=1, lease_seconds=300)
    try:
        delivery = await session.next()
        # A bad request is refused whole: its settlement is not made either.
        later.settlements.append(session.settlement(mark_processed=_mark(delivery, "no")))
        session.send(later)
        error = await session.ended()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(error) == [field]
        message = await wait_state(stub, "later-1", pb.MESSAGE_STATE_PENDING, within=10)
        assert message.reply_id == ""
    finally:
        await session.close()


async def test_settlements_in_the_first_request_are_made(stub):
    await create(stub, "already mine", id="first-frame")
    reader = StreamReader(stub, consumer="holder", max_in_flight=1, lease_seconds=60)
    try:
        delivery = await reader.next()
    finally:
        await reader.close()
    session = ConsumeSession(
        stub,
        consumer="late",
        drain=True,
        first=pb.ConsumeRequest(
            settlements=[pb.Settlement(correlation_id=7, mark_processed=_mark(delivery, "hi"))]
        ),
    )
    try:
        result = await session.result(7)
        assert result.status.code == code_pb2.OK
        assert result.mark_processed.reply.text == "hi"
        assert await session.half_close() == grpc.StatusCode.OK
    finally:
        await session.close()


async def test_store_and_bot_processes_answer_each_message_once_over_consume(stub, start_bot):
    bot = await start_bot(persona="session", max_in_flight=8)
    ids = await create_many(stub, 60, clients=6, prefix="e2e")
    await wait_settled(stub, expected_processed=120, within=90)
    replies = check_answered_once(await list_all(stub), ids, personas=["session"])
    assert len(replies) == 60
    assert "(Consume)" in bot.log_text(), "the bot streamed on a Consume session"
    for message_id in ids:
        assert (await get(stub, message_id)).delivery_attempts == 1
    # The stop drains, then half-closes: the store ends the session with OK.
    assert await asyncio.to_thread(bot.terminate) == 0
