"""A Consume session on its own (ackbot.store.consume), without a servicer or a gRPC server:
driven the way grpc.aio drives it (an async iterator of requests), over a real MessageManager
and database, settling through the same Settlements the unary RPCs use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.rpc import code_pb2

from ackbot.common.limits import Limits
from ackbot.common.status import error_info
from ackbot.store.consume import ConsumeSession
from ackbot.store.errors import InvalidArgument
from ackbot.store.manager import MessageManager
from ackbot.store.models import State
from ackbot.store.repository import MessageRepository
from ackbot.store.settlements import Settlements
from ackbot.store.types import NewMessage
from ackbot.v1 import message_store_pb2 as pb

from .conftest import SECOND_NS, FakeClock

DEADLINE = 5  # seconds, for anything the test waits for
LEASE_NS = 60 * SECOND_NS
LIMITS = Limits()


class Session:
    """One open session, run by a task of its own; what it sends is sorted into deliveries
    and settlement results as the client would read them."""

    def __init__(self, manager: MessageManager, first: pb.ConsumeRequest, window: int) -> None:
        self._requests: asyncio.Queue[pb.ConsumeRequest | None] = asyncio.Queue()
        self.deliveries: asyncio.Queue[pb.Delivery] = asyncio.Queue()
        self.results: dict[int, pb.SettlementResult] = {}
        self._result_arrived = asyncio.Condition()
        self.session: ConsumeSession | None = None
        self.task = asyncio.create_task(self._run(manager, first, window))

    async def _run(self, manager: MessageManager, first: pb.ConsumeRequest, window: int) -> bool:
        async with manager.open_stream("bot", max_in_flight=window, lease_ns=LEASE_NS) as stream:
            self.session = ConsumeSession(stream, Settlements(manager, LIMITS).settle, LIMITS)
            async for response in self.session.run(first, self._read()):
                for delivery in response.deliveries:
                    self.deliveries.put_nowait(delivery)
                async with self._result_arrived:
                    for result in response.settlement_results:
                        self.results[result.correlation_id] = result
                    self._result_arrived.notify_all()
            return self.session.shut_down

    async def _read(self) -> AsyncIterator[pb.ConsumeRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def send(self, request: pb.ConsumeRequest) -> None:
        self._requests.put_nowait(request)

    def half_close(self) -> None:
        self._requests.put_nowait(None)

    async def next_delivery(self) -> pb.Delivery:
        async with asyncio.timeout(DEADLINE):
            return await self.deliveries.get()

    async def result(self, correlation_id: int) -> pb.SettlementResult:
        async with asyncio.timeout(DEADLINE), self._result_arrived:
            await self._result_arrived.wait_for(lambda: correlation_id in self.results)
            return self.results[correlation_id]

    async def ended(self) -> bool:
        """Whether the session ended for a shutdown (False: the client half-closed)."""
        async with asyncio.timeout(DEADLINE):
            return await self.task


@pytest.fixture
async def manager(repo: MessageRepository, clock: FakeClock) -> AsyncIterator[MessageManager]:
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    yield manager
    await manager.close_streams(handler_wait_seconds=DEADLINE)


@pytest.fixture
async def open_session(manager: MessageManager) -> AsyncIterator:
    sessions: list[Session] = []

    def open_session(window: int = 1, **first: object) -> Session:
        request = pb.ConsumeRequest(open=pb.StreamUnprocessedRequest(consumer="bot"), **first)
        session = Session(manager, request, window)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.task.cancel()
    await asyncio.gather(*(s.task for s in sessions), return_exceptions=True)


async def create(manager: MessageManager, message_id: str) -> None:
    await manager.create_message(NewMessage(author="alice", text="hi", id=message_id))


def mark(correlation_id: int, delivery: pb.Delivery, reply: str = "hello") -> pb.Settlement:
    return pb.Settlement(
        correlation_id=correlation_id,
        mark_processed=pb.MarkProcessedRequest(
            id=delivery.message.id,
            lease_token=delivery.lease_token,
            reply=pb.Message(author="bot", text=reply),
        ),
    )


async def test_a_delivery_goes_out_and_its_settlement_is_answered_once_committed(
    manager, open_session
):
    await create(manager, "m1")
    session = open_session()
    delivery = await session.next_delivery()
    assert (delivery.message.id, delivery.attempt) == ("m1", 1)
    assert delivery.message.state == pb.MESSAGE_STATE_LEASED

    session.send(pb.ConsumeRequest(settlements=[mark(7, delivery)]))
    result = await session.result(7)

    assert result.status.code == code_pb2.OK
    assert result.mark_processed.message.state == pb.MESSAGE_STATE_PROCESSED
    assert result.mark_processed.reply.text == "hello"
    stored = await manager.get_message("m1")
    assert (stored.state, stored.reply_id) == (State.PROCESSED, result.mark_processed.reply.id)


async def test_a_refused_settlement_gets_its_status_and_the_session_goes_on(manager, open_session):
    await create(manager, "m1")
    session = open_session(window=2)
    delivery = await session.next_delivery()
    wrong_token = pb.Settlement(
        correlation_id=1,
        release=pb.ReleaseMessageRequest(id="m1", lease_token="not-the-token"),
    )
    no_action = pb.Settlement(correlation_id=2)
    session.send(pb.ConsumeRequest(settlements=[wrong_token, no_action]))

    refused = await session.result(1)
    assert refused.status.code == code_pb2.FAILED_PRECONDITION
    assert error_info(refused.status) == ("LEASE_NOT_CURRENT", {"message_id": "m1"})
    assert not refused.HasField("release")
    invalid = await session.result(2)
    assert invalid.status.code == code_pb2.INVALID_ARGUMENT
    assert "action" in invalid.status.message

    await create(manager, "m2")
    assert (await session.next_delivery()).message.id == "m2"
    session.send(pb.ConsumeRequest(settlements=[mark(3, delivery)]))
    assert (await session.result(3)).status.code == code_pb2.OK


async def test_a_settlement_in_the_first_request_is_answered(manager, open_session):
    await create(manager, "m1")
    first_session = open_session()
    delivery = await first_session.next_delivery()
    first_session.half_close()
    assert await first_session.ended() is False

    # The first request's settlements run before the new stream claims anything, and a late
    # MarkProcessed is keyed by the id alone (docs/semantics.md): it is taken, not refused.
    session = open_session(settlements=[mark(5, delivery, reply="late")])
    result = await session.result(5)
    assert result.status.code == code_pb2.OK
    assert result.mark_processed.reply.text == "late"
    assert (await manager.get_message("m1")).state == State.PROCESSED


async def test_a_raised_window_brings_the_next_delivery(manager, open_session):
    await create(manager, "m1")
    await create(manager, "m2")
    session = open_session(window=1)
    assert (await session.next_delivery()).message.id == "m1"
    session.send(pb.ConsumeRequest(max_in_flight=2))
    assert (await session.next_delivery()).message.id == "m2"


async def test_a_half_close_answers_every_settlement_read_then_ends(manager, open_session):
    await create(manager, "m1")
    session = open_session()
    delivery = await session.next_delivery()
    session.send(pb.ConsumeRequest(settlements=[mark(9, delivery)]))
    session.half_close()

    assert await session.ended() is False
    assert session.results[9].status.code == code_pb2.OK


async def test_a_bad_request_ends_the_session_and_starts_nothing(manager, open_session):
    await create(manager, "m1")
    session = open_session()
    delivery = await session.next_delivery()
    # A window out of range refuses the whole request: its settlement is never run.
    session.send(
        pb.ConsumeRequest(max_in_flight=LIMITS.max_in_flight + 1, settlements=[mark(1, delivery)])
    )

    with pytest.raises(InvalidArgument, match="max_in_flight"):
        await session.ended()
    assert 1 not in session.results
    stored = await manager.get_message("m1")
    assert stored.state != State.PROCESSED


async def test_a_second_open_ends_the_session(open_session):
    session = open_session()
    session.send(pb.ConsumeRequest(open=pb.StreamUnprocessedRequest()))

    with pytest.raises(InvalidArgument, match="open: is allowed in the first request only"):
        await session.ended()


async def test_a_shutdown_ends_the_session_as_shut_down(manager, open_session):
    session = open_session()
    await create(manager, "m1")
    await session.next_delivery()  # the session is running
    await manager.close_streams(handler_wait_seconds=DEADLINE)

    assert await session.ended() is True
