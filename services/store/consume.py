"""A Consume session once it is open: its deliveries and its settlements' results, merged into
one stream of responses.

No gRPC here beyond the messages: the servicer opens the stream (checking the first request)
and ends the call; the session is driven by any async iterator of requests, a DeliveryStream
and a settle function, which is how tests/store/test_consume_session.py drives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from ackbot.common import trace
from ackbot.common.limits import Limits
from ackbot.store import validation as rules
from ackbot.store.errors import FieldViolation, InvalidArgument
from ackbot.store.grpc_errors import UndecodableRequest, reject_undecodable
from ackbot.store.manager import DeliveryStream
from ackbot.store.mapping import delivery_responses
from ackbot.store.types import Delivery
from ackbot.v1 import message_store_pb2 as pb

Settle = Callable[[pb.Settlement], Awaitable[pb.SettlementResult]]
Requests = AsyncIterator[pb.ConsumeRequest | UndecodableRequest]


@dataclass(frozen=True)
class _End:
    """The session is over: the client half-closed (neither set), the store is shutting down,
    or `error` ends it."""

    shut_down: bool = False
    error: BaseException | None = None


_Outgoing = list[Delivery] | pb.SettlementResult | _End


class ConsumeSession:
    """Every settlement runs in a task of its own, all those of a frame started before the next
    frame is read: the manager's writes then reach group commit together and share a
    transaction, and each result goes out once its transaction has committed. Three sources feed
    one outbox: the delivery stream, the request reader, and the settlement tasks.

    `run` ends when the client half-closes (after answering every settlement read), raises
    the error that ends the session (a bad request, a failed stream), or ends with `shut_down`
    set when the store shuts down.
    """

    def __init__(self, stream: DeliveryStream, settle: Settle, limits: Limits) -> None:
        self._stream = stream
        self._settle_one = settle
        self._limits = limits
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._settling: set[asyncio.Task[None]] = set()
        self.shut_down = False

    async def run(
        self, first: pb.ConsumeRequest, requests: Requests
    ) -> AsyncIterator[pb.ConsumeResponse]:
        """Acts on `first` (already checked by the opener), then on what `requests` yields."""
        self._take(first)
        reader = asyncio.create_task(self._read(requests), name="consume-reader")
        pump = asyncio.create_task(self._pump(), name="consume-deliveries")
        try:
            while True:
                items = [await self._outbox.get()]
                while not self._outbox.empty():
                    items.append(self._outbox.get_nowait())
                deliveries: list[Delivery] = []
                results: list[pb.SettlementResult] = []
                end: _End | None = None
                for item in items:
                    if isinstance(item, _End):
                        end = end or item
                    elif isinstance(item, list):
                        deliveries.extend(item)
                    else:
                        results.append(item)
                if trace.ENABLED:
                    trace.mark_all("store_delivered", [d.message.id for d in deliveries])
                    trace.mark_all("store_result_sent", [_settled_id(r) for r in results])
                for response in delivery_responses(pb.ConsumeResponse, deliveries, results):
                    yield response
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    self.shut_down = end.shut_down
                    return
        finally:
            # A settlement cut short here may still commit (group commit runs it regardless);
            # its client gets no result and, as after any broken stream, settles it again.
            tasks = [reader, pump, *self._settling]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _take(self, request: pb.ConsumeRequest | UndecodableRequest) -> None:
        """Acts on one request: checks it whole first, so a bad one starts nothing."""
        reject_undecodable(request)
        assert isinstance(request, pb.ConsumeRequest)
        v = rules.Violations()
        rules.check_consume_window(v, request.max_in_flight, self._limits)
        v.raise_if_any()
        if request.max_in_flight:
            self._stream.set_max_in_flight(request.max_in_flight)
        if request.drain:
            self._stream.drain()
        for settlement in request.settlements:
            if trace.ENABLED:
                trace.mark("store_settle_received", _settled_id(settlement))
            task = asyncio.create_task(self._settle(settlement))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(self, settlement: pb.Settlement) -> None:
        result = await self._settle_one(settlement)
        if trace.ENABLED:
            trace.mark("store_settle_committed", _settled_id(settlement))
        self._outbox.put_nowait(result)

    async def _read(self, requests: Requests) -> None:
        try:
            async for request in requests:
                if isinstance(request, pb.ConsumeRequest) and request.HasField("open"):
                    raise InvalidArgument(
                        [FieldViolation("open", "is allowed in the first request only")]
                    )
                self._take(request)
            # The client half-closed: every settlement read so far is answered, then it ends.
            await asyncio.gather(*list(self._settling))
            self._outbox.put_nowait(_End())
        except Exception as exc:
            self._outbox.put_nowait(_End(error=exc))

    async def _pump(self) -> None:
        try:
            async for batch in self._stream:
                self._outbox.put_nowait(batch)
            # The deliveries end only when the store shuts down.
            self._outbox.put_nowait(_End(shut_down=True))
        except Exception as exc:
            self._outbox.put_nowait(_End(error=exc))


def _settled_id(item: pb.Settlement | pb.SettlementResult) -> str:
    """The message id a settlement (or its result) is about, for the trace."""
    if isinstance(item, pb.Settlement):
        return str(getattr(item, item.WhichOneof("action") or "mark_processed").id)
    return str(getattr(item, item.WhichOneof("response") or "mark_processed").message.id)
