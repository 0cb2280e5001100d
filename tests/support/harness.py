"""The helpers the tests share to talk to a store and check what it holds: messages created and
listed, waits for a state, the answered-once contract, a stream reader. The processes themselves
are ackbot.testing's."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ackbot.testing import PAGE_SIZE, RPC_TIMEOUT, wait_until
from ackbot.v1 import message_store_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]
GRPCURL = Path(sys.executable).parent / "grpcurl"

UNSETTLED_STATES = (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED)

_ids = itertools.count(1)


# -- RPC helpers --------------------------------------------------------------------------------


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def unique_id(prefix: str = "m") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


async def create(stub, text: str, *, id: str = "", author: str = "tester", create_time=None):
    message = pb.Message(id=id, author=author, text=text)
    if create_time is not None:
        message.create_time.CopyFrom(create_time)
    response = await stub.CreateMessage(
        pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT
    )
    return response.message


async def create_many(stub, count: int, *, clients: int = 10, prefix: str = "msg") -> list[str]:
    """Creates `count` messages from `clients` concurrent tasks; returns their ids."""
    ids = [f"{prefix}-{i:05d}" for i in range(count)]

    async def client(number: int) -> None:
        for message_id in ids[number::clients]:
            await create(stub, f"hello number {message_id}", id=message_id, author=f"c{number}")

    await asyncio.gather(*(client(n) for n in range(clients)))
    return ids


async def get(stub, message_id: str):
    response = await stub.GetMessage(pb.GetMessageRequest(id=message_id), timeout=RPC_TIMEOUT)
    return response.message


async def list_all(stub, *, state=pb.MESSAGE_STATE_UNSPECIFIED, reply_to: str = ""):
    """Every matching message, following page tokens."""
    messages, token = [], ""
    while True:
        response = await stub.ListMessages(
            pb.ListMessagesRequest(
                page_size=PAGE_SIZE, page_token=token, state=state, reply_to=reply_to
            ),
            timeout=RPC_TIMEOUT,
        )
        messages.extend(response.messages)
        token = response.next_page_token
        if not token:
            return messages


async def count_state(stub, state) -> int:
    return len(await list_all(stub, state=state))


async def wait_settled(stub, expected_processed: int, within: float) -> None:
    """Waits until no message is PENDING or LEASED and `expected_processed` messages (originals
    and replies together) are PROCESSED."""

    async def settled() -> bool:
        for state in UNSETTLED_STATES:
            if await count_state(stub, state):
                return False
        return await count_state(stub, pb.MESSAGE_STATE_PROCESSED) >= expected_processed

    await wait_until(settled, within, interval=0.25, what="every message settled")


async def wait_state(stub, message_id: str, state, within: float):
    async def reached():
        message = await get(stub, message_id)
        return message if message.state == state else None

    return await wait_until(reached, within, what=f"{message_id} is {pb.MessageState.Name(state)}")


def check_answered_once(messages, original_ids: Iterable[str], personas: Iterable[str] = ()):
    """Asserts the contract on a full listing: each original PROCESSED with exactly one reply,
    named by its reply_id; replies born PROCESSED, never delivered, never answered; no reply
    answers a reply. Returns {original id: reply}."""
    by_id = {m.id: m for m in messages}
    replies: dict[str, list] = {}
    for message in messages:
        if message.reply_to:
            replies.setdefault(message.reply_to, []).append(message)
    problems = []
    originals = list(original_ids)
    for original_id in originals:
        original = by_id.get(original_id)
        if original is None:
            problems.append(f"{original_id}: missing")
            continue
        answers = replies.get(original_id, [])
        if original.state != pb.MESSAGE_STATE_PROCESSED:
            problems.append(f"{original_id}: {pb.MessageState.Name(original.state)}")
        if len(answers) != 1:
            problems.append(f"{original_id}: {len(answers)} replies")
        elif original.reply_id != answers[0].id:
            problems.append(f"{original_id}: reply_id {original.reply_id!r} != {answers[0].id}")
    for reply_to, answers in replies.items():
        if reply_to in by_id and by_id[reply_to].reply_to:
            problems.append(f"a reply answers the reply {reply_to}")
        for reply in answers:
            if reply.state != pb.MESSAGE_STATE_PROCESSED:
                problems.append(f"reply {reply.id}: {pb.MessageState.Name(reply.state)}")
            if reply.delivery_attempts != 0:
                problems.append(f"reply {reply.id} was delivered {reply.delivery_attempts}x")
            if reply.reply_id:
                problems.append(f"reply {reply.id} has a reply {reply.reply_id}")
    personas = set(personas)
    if personas:
        authors = {r.author for answers in replies.values() for r in answers}
        if not authors <= personas:
            problems.append(f"reply authors {sorted(authors - personas)} are no bot's persona")
    assert not problems, f"{len(problems)} problems, first 20: {problems[:20]}"
    return {original_id: replies[original_id][0] for original_id in originals}


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest in an error's status details."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no grpc-status-details-bin in {error}"
    return status_bad_request_fields(status)


def status_bad_request_fields(status) -> list[str]:
    """The fields named by the google.rpc.BadRequest in a google.rpc.Status."""
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(v.field for v in bad_request.field_violations)
    return fields


class StreamReader:
    """Reads a StreamUnprocessed call in a task and queues its deliveries.

    Cancelling a pending grpc.aio `read()` cancels the whole call, so a test that wants to see
    that nothing arrives must not time out a read: it times out `next()` on this queue instead.
    """

    def __init__(
        self, stub, *, consumer: str, max_in_flight: int = 0, lease_seconds=None, queue=None
    ):
        request = pb.StreamUnprocessedRequest(consumer=consumer, max_in_flight=max_in_flight)
        if lease_seconds is not None:
            request.lease_duration.CopyFrom(seconds(lease_seconds))
        self.call = stub.StreamUnprocessed(request, timeout=120)
        # Several readers may share one queue, to wait for a delivery on any of them.
        self.queue: asyncio.Queue = asyncio.Queue() if queue is None else queue
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for response in self.call:
                for delivery in response.deliveries:
                    self.queue.put_nowait(delivery)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    async def wait_open(self) -> None:
        """Waits for the response headers: the store has registered the stream."""
        await asyncio.wait_for(self.call.initial_metadata(), RPC_TIMEOUT)

    async def next(self, within: float = RPC_TIMEOUT):
        try:
            return await asyncio.wait_for(self.queue.get(), within)
        except TimeoutError:
            raise TimeoutError(
                f"no delivery within {within:g} s (stream error: {self.error})"
            ) from None

    async def take(self, count: int, within: float = RPC_TIMEOUT) -> list:
        return [await self.next(within) for _ in range(count)]

    async def expect_nothing(self, window: float) -> None:
        """Asserts that no delivery arrives within `window` seconds."""
        try:
            delivery = await asyncio.wait_for(self.queue.get(), window)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected delivery of {delivery.message.id}")

    async def close(self) -> None:
        self.call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class ConsumeSession:
    """A Consume call driven by hand: requests are queued with `send`, and a task reads the
    responses into a queue of deliveries and a map of settlement results by correlation id.
    `open` is the first request's `open`; `first` may add to that request."""

    def __init__(
        self,
        stub,
        *,
        consumer: str,
        max_in_flight: int = 0,
        lease_seconds=None,
        drain: bool = False,
        first: pb.ConsumeRequest | None = None,
    ) -> None:
        opening = pb.StreamUnprocessedRequest(consumer=consumer, max_in_flight=max_in_flight)
        if lease_seconds is not None:
            opening.lease_duration.CopyFrom(seconds(lease_seconds))
        request = pb.ConsumeRequest(open=opening, drain=drain)
        if first is not None:
            request.MergeFrom(first)
        self._requests: asyncio.Queue = asyncio.Queue()
        self._requests.put_nowait(request)
        self._ids = itertools.count(1)
        self._results: dict[int, asyncio.Future] = {}
        self.deliveries: asyncio.Queue = asyncio.Queue()
        # Each response's settlement results, as they came: which ones shared a response.
        self.result_frames: list[list[int]] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.call = stub.Consume(self._send_all(), timeout=300)
        self._task = asyncio.create_task(self._read())

    async def _send_all(self):
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                for delivery in response.deliveries:
                    self.deliveries.put_nowait(delivery)
                if response.settlement_results:
                    self.result_frames.append(
                        [r.correlation_id for r in response.settlement_results]
                    )
                for result in response.settlement_results:
                    self._future(result.correlation_id).set_result(result)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
            for future in self._results.values():
                if not future.done():
                    future.set_exception(exc)

    def _future(self, correlation_id: int) -> asyncio.Future:
        if correlation_id not in self._results:
            self._results[correlation_id] = asyncio.get_running_loop().create_future()
        return self._results[correlation_id]

    def send(self, request: pb.ConsumeRequest) -> None:
        self._requests.put_nowait(request)

    def settlement(self, **action) -> pb.Settlement:
        """A settlement with a fresh correlation id (`action`: one Settlement action)."""
        return pb.Settlement(correlation_id=next(self._ids), **action)

    async def result(self, correlation_id: int, within: float = RPC_TIMEOUT):
        return await asyncio.wait_for(asyncio.shield(self._future(correlation_id)), within)

    async def settle(self, *settlements: pb.Settlement) -> list:
        """Sends the settlements in one request; returns their results in the same order."""
        self.send(pb.ConsumeRequest(settlements=settlements))
        return [await self.result(s.correlation_id) for s in settlements]

    async def next(self, within: float = RPC_TIMEOUT):
        try:
            return await asyncio.wait_for(self.deliveries.get(), within)
        except TimeoutError:
            raise TimeoutError(f"no delivery within {within:g} s ({self.error})") from None

    async def expect_nothing(self, window: float) -> None:
        try:
            delivery = await asyncio.wait_for(self.deliveries.get(), window)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected delivery of {delivery.message.id}")

    async def half_close(self) -> grpc.StatusCode:
        """Ends the requests; returns the code the store ended the call with."""
        self._requests.put_nowait(None)
        await asyncio.wait_for(self._task, RPC_TIMEOUT)
        return await self.call.code()

    async def ended(self) -> grpc.aio.AioRpcError:
        """Waits for the store to end the call with an error; returns it."""
        await asyncio.wait_for(self._task, RPC_TIMEOUT)
        assert self.error is not None, f"the call ended with {await self.call.code()}"
        return self.error

    async def close(self) -> None:
        self.call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class ConsumeSettler:
    """A stub whose MarkProcessed, ReleaseMessage and ExtendLease go over one Consume session
    instead of unary calls, answering and failing exactly as the unary calls do (a failed
    settlement raises an AioRpcError carrying its status, details included); every other
    method is the plain stub's. The session drains as it opens, so it takes no deliveries
    from the test's own streams.
    """

    def __init__(self, stub) -> None:
        self._stub = stub
        self.session = ConsumeSession(stub, consumer="settler", drain=True)

    def __getattr__(self, name: str):
        return getattr(self._stub, name)

    async def _settle(self, **action):
        session = self.session
        (result,) = await session.settle(session.settlement(**action))
        if result.status.code != 0:
            raise status_error(result.status)
        return getattr(result, result.WhichOneof("response"))

    def MarkProcessed(self, request, **_call_options):
        return self._settle(mark_processed=request)

    def ReleaseMessage(self, request, **_call_options):
        return self._settle(release=request)

    def ExtendLease(self, request, **_call_options):
        return self._settle(extend_lease=request)

    async def close(self) -> None:
        try:
            assert await self.session.half_close() == grpc.StatusCode.OK
        finally:
            await self.session.close()


def status_error(status) -> grpc.aio.AioRpcError:
    """The error a unary call would raise with `status` (a google.rpc.Status)."""
    return grpc.aio.AioRpcError(
        next(code for code in grpc.StatusCode if code.value[0] == status.code),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=status.message,
    )
