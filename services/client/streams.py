"""The stream classes: a StreamUnprocessed call (`DeliveryStream`) and a Consume session
(`ConsumeSession`), on which settlements go too. Neither raises a gRPC error: iterating ends
when the stream ends, and `end_reason` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from ackbot.client.channels import reply_limit
from ackbot.client.outcomes import problem as _problem
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc


class DeliveryStream:
    """One StreamUnprocessed call. Iterating it yields the deliveries of each response until the
    stream ends, for whatever reason, and raises no gRPC error: `end_reason` then says why.

    Cancelling it locally (`cancel()`) ends a pending read with asyncio.CancelledError, as with
    any cancelled call.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[pb.StreamUnprocessedRequest, pb.StreamUnprocessedResponse]
        | grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.ConsumeResponse],
        *,
        address: str = "the store",
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._call = call
        self._on_open = on_open
        # The store this stream goes to, for logs.
        self.address = address
        self._responses: AsyncIterator[Any] | None = None
        # The longest reply text the store accepts, from the headers (see wait_open).
        self.max_reply_bytes = DEFAULT_MAX_TEXT_BYTES
        # Empty while the stream lasts.
        self.end_reason = ""
        # The status code it ended with, once known (None: still open, or not yet read).
        self.end_code: grpc.StatusCode | None = None

    async def wait_open(self) -> bool:
        """True once the stream is established; False when the store could not be reached
        (iterating then ends at once, with the reason)."""
        # The store sends headers as soon as the stream starts, so this returns when the stream
        # is established; if the store is unreachable the call is already over.
        try:
            headers = await self._call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            self._ended(exc.code(), _problem(exc))
            return False
        if self._call.done():
            code = await self._call.code()
            self._ended(code, f"{code.name}: {await self._call.details()}")
            return False
        self.max_reply_bytes = reply_limit(headers)
        if self._on_open is not None:
            self._on_open()
        return True

    def __aiter__(self) -> DeliveryStream:
        return self

    async def __anext__(self) -> Sequence[pb.Delivery]:
        if self._responses is None:
            self._responses = aiter(self._call)
        try:
            response = await anext(self._responses)
        except StopAsyncIteration:
            self._ended(grpc.StatusCode.OK, "the store ended the stream")
            raise
        except grpc.aio.AioRpcError as exc:
            self._ended(exc.code(), _problem(exc))
            raise StopAsyncIteration from None
        self._received(response)
        deliveries: Sequence[pb.Delivery] = response.deliveries
        return deliveries

    def _received(self, response: Any) -> None:
        """A response arrived (a ConsumeSession also reads its settlement results here)."""

    def _ended(self, code: grpc.StatusCode, reason: str) -> None:
        self.end_code = code
        self.end_reason = reason

    def cancel(self) -> None:
        self._call.cancel()


class ConsumeSession(DeliveryStream):
    """One Consume call: deliveries as a DeliveryStream, and settlements sent on the same
    stream (`settle`), each answered by its result.

    Settlements made in the same turn of the event loop go out in one request, so the store
    writes them in one transaction. `drain()` asks the store for no further deliveries;
    `finish()` half-closes and waits for the store to answer what it was sent and end the call.
    Once open, a task of its own reads the responses, so results arrive whether or not anyone
    is iterating the deliveries.
    """

    def __init__(
        self,
        stub: pb_grpc.MessageStoreStub,
        opening: pb.StreamUnprocessedRequest,
        *,
        address: str = "the store",
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._opening = opening
        self._pending: list[pb.Settlement] = []
        self._drain = False
        self._closing = False
        self._wake = asyncio.Event()
        self._results: dict[int, asyncio.Future[pb.SettlementResult]] = {}
        self._correlation_ids = itertools.count(1)
        self._over = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        # Batches of deliveries, then None once the session is over.
        self._inbox: asyncio.Queue[Sequence[pb.Delivery] | None] = asyncio.Queue()
        super().__init__(stub.Consume(self._requests()), address=address, on_open=on_open)

    async def wait_open(self) -> bool:
        opened = await super().wait_open()
        if opened:
            self._start_reading()
        return opened

    def _start_reading(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f"consume {self.address}")

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._received(response)
                if response.deliveries:
                    self._inbox.put_nowait(list(response.deliveries))
            self._ended(grpc.StatusCode.OK, "the store ended the stream")
        except grpc.aio.AioRpcError as exc:
            self._ended(exc.code(), _problem(exc))
        except asyncio.CancelledError:
            self._ended(grpc.StatusCode.CANCELLED, "cancelled")
            raise
        finally:
            self._inbox.put_nowait(None)

    async def __anext__(self) -> Sequence[pb.Delivery]:
        if self._over.is_set() and self._inbox.empty():
            raise StopAsyncIteration
        self._start_reading()
        batch = await self._inbox.get()
        if batch is None:
            self._inbox.put_nowait(None)  # for the next reader, if any
            raise StopAsyncIteration
        return batch

    async def _requests(self) -> AsyncIterator[pb.ConsumeRequest]:
        # A drain asked for before the call started goes with `open` (the store takes both).
        yield pb.ConsumeRequest(open=self._opening, drain=self._drain)
        self._drain = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._over.is_set():
                return  # nothing can be sent on a call that is over
            if self._pending or self._drain:
                request = pb.ConsumeRequest(settlements=self._pending, drain=self._drain)
                self._pending, self._drain = [], False
                yield request
            if self._closing:
                return

    @property
    def accepting(self) -> bool:
        """Whether a settlement may still be sent on this session."""
        return not self._closing and not self._over.is_set()

    async def settle(
        self, settlement: pb.Settlement, wait_seconds: float
    ) -> pb.SettlementResult | None:
        """Sends `settlement` and returns its result; None when the session ended, or gave no
        result within `wait_seconds` (the caller settles another way: every settlement is
        safe to repeat)."""
        if not self.accepting:
            return None
        correlation_id = next(self._correlation_ids)
        settlement.correlation_id = correlation_id
        future: asyncio.Future[pb.SettlementResult] = asyncio.get_running_loop().create_future()
        self._results[correlation_id] = future
        self._pending.append(settlement)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_seconds)
        except (TimeoutError, _SessionOver):
            return None
        finally:
            self._results.pop(correlation_id, None)

    def drain(self) -> None:
        """Asks the store to send no further delivery on this session."""
        self._drain = True
        self._wake.set()

    async def finish(self, wait_seconds: float) -> None:
        """Half-closes the session and waits up to `wait_seconds` for the store to end it
        (after answering every settlement sent); the caller then cancels it either way."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._over.wait(), wait_seconds)

    def _received(self, response: Any) -> None:
        for result in response.settlement_results:
            future = self._results.get(result.correlation_id)
            if future is not None and not future.done():
                future.set_result(result)

    def _ended(self, code: grpc.StatusCode, reason: str) -> None:
        if self._over.is_set():
            return
        super()._ended(code, reason)
        self._over.set()
        # The request generator returns by itself: a call that ended (refused at its initial
        # metadata, say) ignores cancel(), and gRPC's task would stay inside the generator
        # until the garbage collector destroyed both ("Task was destroyed but it is pending!",
        # "aclose(): asynchronous generator is already running").
        self._closing = True
        self._wake.set()
        for future in self._results.values():
            if not future.done():
                future.set_exception(_SessionOver())

    def detach(self) -> None:
        """Ends the iteration of the deliveries, not the call: a drained session whose leases
        are still held stays open for their settlements (see Consumer.resume)."""
        self._inbox.put_nowait(None)

    def cancel(self) -> None:
        super().cancel()
        self._ended(grpc.StatusCode.CANCELLED, "cancelled")
        if self._reader is not None:
            self._reader.cancel()
        else:
            self._inbox.put_nowait(None)


class _SessionOver(Exception):
    """The session ended before a settlement's result came."""
