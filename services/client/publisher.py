"""`Publisher`: batches concurrent creates into BatchCreateMessages calls, the way Google Cloud
Pub/Sub's client batches publishes.

`publish()` adds the message to the open batch and returns a future at once. The batch is sent
when it holds `max_messages`, when the next message would take it past `max_bytes`, or
`max_latency` after its first message, whichever comes first; batches in flight do not hold up
the next one. Each future resolves to the message as stored (`already_existed` when a retry
found it) or raises the item's own error as a typed StoreError (InvalidArgument naming
`requests[N].message.FIELD`, AlreadyExists [ID_TAKEN], ...). `close()` sends what is left and
waits for every future.

A batch is retried whole on UNAVAILABLE and DEADLINE_EXCEEDED with backoff: that is safe
because the publisher chooses every id the caller left empty, so a retried item finds its
message stored (`already_existed`) instead of storing it twice. A store too old for
BatchCreateMessages (UNIMPLEMENTED) gets the items by CreateMessage, concurrently, from then on.
Batches are independent: messages published together may be stored out of publish order (as
with Pub/Sub without ordering keys); the store's `sequence` is the order of delivery. A batch
refused for its size (a store whose --max-request-bytes is below `max_bytes`) is sent again in
halves.

Flow control (Pub/Sub's PublishFlowControl): `FlowControl` bounds the messages and bytes
published and not yet answered, so a producer faster than the store cannot queue without end.
Past a limit, `await publish_async()` waits for room (BLOCK, the default) or raises
FlowControlLimitError (ERROR); `publish()`, which cannot wait, raises it under both. IGNORE
turns the limits off (the behaviour before flow control).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from ackbot.client.client import Client, message
from ackbot.client.errors import StoreError, from_status
from ackbot.common.limits import MAX_BATCH_CREATE_ITEMS
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSettings:
    """When a batch is sent (Pub/Sub's BatchSettings, with its defaults where they fit)."""

    #: most messages in one call (the store takes at most 1,000)
    max_messages: int = 100
    #: most bytes of one request: under the store's --max-request-bytes (64 KiB by default)
    max_bytes: int = 60 * 1024
    #: how long the first message of a batch waits for company, in seconds
    max_latency: float = 0.01

    def __post_init__(self) -> None:
        if not 1 <= self.max_messages <= MAX_BATCH_CREATE_ITEMS:
            raise ValueError(f"max_messages must be 1 to {MAX_BATCH_CREATE_ITEMS}")
        if self.max_bytes < 1 or self.max_latency < 0:
            raise ValueError("max_bytes must be positive and max_latency not negative")


class LimitExceededBehavior(enum.Enum):
    """What a publish past a FlowControl limit does (Pub/Sub's names)."""

    BLOCK = "block"  # publish_async waits until answers make room; publish() raises
    ERROR = "error"  # both raise FlowControlLimitError
    IGNORE = "ignore"  # no limit


class FlowControlLimitError(Exception):
    """A publish would pass FlowControl's message_limit or byte_limit (nothing was queued)."""


@dataclass(frozen=True)
class FlowControl:
    """Bounds on what is published and not yet answered (Pub/Sub's PublishFlowControl)."""

    #: most messages published and not yet answered
    message_limit: int = 1000
    #: most bytes of those messages (as sent in a BatchCreateMessagesRequest)
    byte_limit: int = 10 * 1024 * 1024
    limit_exceeded_behavior: LimitExceededBehavior = LimitExceededBehavior.BLOCK

    def __post_init__(self) -> None:
        if self.message_limit < 1 or self.byte_limit < 1:
            raise ValueError("message_limit and byte_limit must be positive")


@dataclass(eq=False)
class _Batch:
    requests: list[pb.CreateMessageRequest] = field(default_factory=list)
    futures: list[asyncio.Future[pb.CreateMessageResponse]] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


def _too_large(error: StoreError) -> bool:
    """Refused by gRPC for its size, before the store read it: no ErrorInfo, unlike a full
    database's RESOURCE_EXHAUSTED [STORAGE_FULL]."""
    return error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and not error.reason


def _item_size(request: pb.CreateMessageRequest) -> int:
    """What the item adds to a BatchCreateMessagesRequest: its bytes with their tag and length."""
    return pb.BatchCreateMessagesRequest(requests=[request]).ByteSize()


class Publisher:
    """Batches `publish()` calls into BatchCreateMessages; see the module docstring.
    `async with Publisher(client) as publisher:` closes (and so flushes) it."""

    def __init__(
        self,
        client: Client,
        settings: BatchSettings | None = None,
        flow_control: FlowControl | None = None,
    ) -> None:
        self._client = client
        self.settings = settings or BatchSettings()
        self.flow_control = flow_control or FlowControl()
        #: messages and bytes published and not yet answered (what FlowControl bounds)
        self.outstanding_messages = 0
        self.outstanding_bytes = 0
        self._room = asyncio.Event()
        self._batch = _Batch()
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False
        # Cleared for good by a store that answers BatchCreateMessages with UNIMPLEMENTED.
        self._batch_rpc = True

    def publish(
        self,
        text: str,
        *,
        author: str,
        id: str = "",
        create_time_ns: int | None = None,
        conversation_id: str = "",
        hold: bool | None = None,
    ) -> asyncio.Future[pb.CreateMessageResponse]:
        """Queues a create; the future resolves to CreateMessage's response for it (the stored
        message, and `already_existed`), or raises its StoreError. The id is chosen here when
        not given, so that the batch can be retried. `hold` as Client.create's."""
        if self._closed:
            raise RuntimeError("the publisher is closed")
        request = _create_request(text, author, id, create_time_ns, conversation_id, hold)
        size = _item_size(request)
        problem = self._over_limit(size)
        if problem is not None:
            raise FlowControlLimitError(problem)
        return self._queue(request, size)

    async def publish_async(
        self,
        text: str,
        *,
        author: str,
        id: str = "",
        create_time_ns: int | None = None,
        conversation_id: str = "",
        hold: bool | None = None,
    ) -> asyncio.Future[pb.CreateMessageResponse]:
        """publish(), waiting first for room under FlowControl's limits when its behaviour is
        BLOCK: a producer faster than the store is slowed to the store's pace."""
        if self._closed:
            raise RuntimeError("the publisher is closed")
        request = _create_request(text, author, id, create_time_ns, conversation_id, hold)
        size = _item_size(request)
        while (problem := self._over_limit(size)) is not None:
            blocking = self.flow_control.limit_exceeded_behavior is LimitExceededBehavior.BLOCK
            if not blocking or size > self.flow_control.byte_limit:
                raise FlowControlLimitError(problem)  # a message that can never fit, too
            self._room.clear()
            await self._room.wait()
            if self._closed:
                raise RuntimeError("the publisher is closed")
        return self._queue(request, size)

    def _over_limit(self, size: int) -> str | None:
        """Why one more message of `size` bytes would pass a limit, or None."""
        limits = self.flow_control
        if limits.limit_exceeded_behavior is LimitExceededBehavior.IGNORE:
            return None
        if self.outstanding_messages + 1 > limits.message_limit:
            return (
                f"{self.outstanding_messages} messages unanswered: message_limit is "
                f"{limits.message_limit}"
            )
        if self.outstanding_bytes + size > limits.byte_limit:
            return (
                f"{self.outstanding_bytes} bytes unanswered and {size} more: byte_limit is "
                f"{limits.byte_limit}"
            )
        return None

    def _answered(self, size: int) -> None:
        self.outstanding_messages -= 1
        self.outstanding_bytes -= size
        self._room.set()

    def _queue(
        self, request: pb.CreateMessageRequest, size: int
    ) -> asyncio.Future[pb.CreateMessageResponse]:
        batch = self._batch
        if batch.requests and batch.size + size > self.settings.max_bytes:
            self._send()
            batch = self._batch
        future: asyncio.Future[pb.CreateMessageResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self.outstanding_messages += 1
        self.outstanding_bytes += size
        # Done however it ends (answered, failed, cancelled by the caller): room again.
        future.add_done_callback(lambda _: self._answered(size))
        batch.requests.append(request)
        batch.futures.append(future)
        batch.size += size
        if (
            len(batch.requests) >= self.settings.max_messages
            or batch.size >= self.settings.max_bytes
        ):
            self._send()
        elif batch.timer is None:
            batch.timer = asyncio.get_running_loop().call_later(
                self.settings.max_latency, self._send
            )
        return future

    async def flush(self) -> None:
        """Sends the open batch now and waits until every batch sent so far is answered."""
        self._send()
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def close(self) -> None:
        """Refuses new messages, sends what is queued, and waits for every answer. Safe to call
        twice."""
        self._closed = True
        await self.flush()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _send(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if batch.timer is not None:
            batch.timer.cancel()
        if not batch.requests:
            return
        task = asyncio.create_task(self._answer(batch), name="publisher-batch")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, batch: _Batch) -> None:
        results: Sequence[pb.CreateMessageResponse | BaseException]
        try:
            results = await self._outcomes(batch.requests)
        except Exception as exc:
            # Not the store's answer (a bug, a broken channel): every item learns of it.
            log.exception("a batch of %d creates failed", len(batch.requests))
            results = [exc] * len(batch.requests)
        for future, result in zip(batch.futures, results, strict=True):
            if future.done():  # the caller cancelled it
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _outcomes(
        self, requests: list[pb.CreateMessageRequest]
    ) -> Sequence[pb.CreateMessageResponse | BaseException]:
        """One outcome per request: by BatchCreateMessages while the store has it, else by
        CreateMessage each."""
        if self._batch_rpc:
            try:
                return await self._send_batch(requests)
            except StoreError as exc:
                if exc.code is grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("the store has no BatchCreateMessages; creating one by one")
                    self._batch_rpc = False
                elif _too_large(exc) and len(requests) > 1:
                    # The store takes less than max_bytes (its --max-request-bytes is lower):
                    # halves, until they fit or one message alone is refused.
                    half = len(requests) // 2
                    first, second = await asyncio.gather(
                        self._outcomes(requests[:half]), self._outcomes(requests[half:])
                    )
                    return [*first, *second]
                else:
                    # The whole call was refused: every item learns why.
                    return [exc] * len(requests)
        return await asyncio.gather(
            *(self._send_one(request) for request in requests), return_exceptions=True
        )

    async def _send_batch(
        self, requests: list[pb.CreateMessageRequest]
    ) -> list[pb.CreateMessageResponse | StoreError]:
        request = pb.BatchCreateMessagesRequest(requests=requests)
        first = requests[0].message.id
        response = await self._client.call(
            "BatchCreateMessages",
            lambda timeout: self._client.stub.BatchCreateMessages(request, timeout=timeout),
            message_id=first if len(requests) == 1 else f"{first} (+{len(requests) - 1} more)",
        )
        if len(response.results) != len(requests):
            raise StoreError(
                f"the store answered {len(response.results)} of {len(requests)} items",
                code=grpc.StatusCode.INTERNAL,
            )
        return [
            from_status(result.error) if result.HasField("error") else result.response
            for result in response.results
        ]

    async def _send_one(self, request: pb.CreateMessageRequest) -> pb.CreateMessageResponse:
        return await self._client.send_create(request)


def _create_request(
    text: str,
    author: str,
    id: str,
    create_time_ns: int | None,
    conversation_id: str,
    hold: bool | None,
) -> pb.CreateMessageRequest:
    return pb.CreateMessageRequest(
        message=message(
            text,
            author=author,
            id=id,
            create_time_ns=create_time_ns,
            conversation_id=conversation_id,
        ),
        hold=hold,
    )
