"""`Client`: the MessageStore for internal services, async, typed, retrying where it is safe.

Every call is retried on UNAVAILABLE and DEADLINE_EXCEEDED with exponential backoff and full
jitter (retry.py's `call_with_failover`, one store), within `retry_budget_seconds`; what is still
failing then, and every other refusal, is raised as a typed `StoreError`. A create is made safe
to retry by choosing its id here when the caller gave none (the store's own id layout), so a
retried create is answered `already_existed` instead of storing the message twice.

Channels, TLS and tokens are the CLI's and the bot's: `connect` takes the same options
(`client_credentials`), and the channel has channels.py's reconnect and keepalive settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc

from ackbot.client.channels import open_channel
from ackbot.client.errors import from_rpc_error
from ackbot.client.listing import LAST_MESSAGE_REQUEST, ListFilters, PageWalk
from ackbot.client.retry import call_with_failover
from ackbot.common.backoff import RECONNECT_BACKOFF
from ackbot.common.serving import client_credentials
from ackbot.store.ids import new_message_id
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

T = TypeVar("T")
# One page of ListMessages (named here: inside Client, `list` is its method).
Page = list[pb.Message]

# How long a call keeps being retried while the store is unreachable before it fails.
DEFAULT_RETRY_BUDGET_SECONDS = 30.0


def new_id() -> str:
    """A message id in the store's layout (time-sortable, 26 characters), chosen by the client
    so that a create can be retried."""
    return new_message_id(time.time_ns())


class Client:
    """An async client of one store. Make it inside the event loop that uses it (gRPC channels
    belong to one loop); `async with Client.connect(...) as client:` closes it."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        address: str = "the store",
        retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_SECONDS,
    ) -> None:
        self.channel = channel
        self.address = address
        self.stub = pb_grpc.MessageStoreStub(channel)
        self.retry_budget_seconds = retry_budget_seconds

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        token: str | None = None,
        retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_SECONDS,
    ) -> Client:
        """A client of the store at `target` (HOST:PORT): TLS when `ca` is given (mutual with
        `cert` and `key`), `token` as the bearer token on every call, the same rules as the
        CLI's --tls-ca/--tls-cert/--tls-key/--token-file (a token goes to a non-loopback
        address only over TLS: ValueError otherwise)."""
        credentials = client_credentials(target, ca=ca, cert=cert, key=key, token=token)
        return cls(
            open_channel(target, credentials),
            address=target,
            retry_budget_seconds=retry_budget_seconds,
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(
        self, what: str, invoke: Callable[[float], Awaitable[T]], *, message_id: str = "-"
    ) -> T:
        """`invoke(timeout)`, retried while the store is unreachable; a typed StoreError when
        it is refused, or still unreachable after the retry budget."""
        try:
            return await call_with_failover(
                [(self.address, invoke)],
                what=what,
                message_id=message_id,
                budget_seconds=self.retry_budget_seconds,
                retry_log_level=logging.DEBUG,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    # -- the calls ------------------------------------------------------------------------------

    async def create(
        self,
        text: str,
        *,
        author: str,
        id: str = "",
        create_time_ns: int | None = None,
        conversation_id: str = "",
        hold: bool | None = None,
    ) -> pb.CreateMessageResponse:
        """Stores a message (CreateMessage), in `conversation_id` when given (delivered in
        order within it, and the bot reads it as context). The id is chosen here when not given,
        so that the retries are safe; `already_existed` says a retry found it stored. `hold`:
        HELD for moderation (True) or not (False) whatever the store's --hold-new-messages;
        None: the store decides. A create with a deleted message's id is AlreadyExists with
        reason MESSAGE_DELETED."""
        request = pb.CreateMessageRequest(
            message=message(
                text,
                author=author,
                id=id,
                create_time_ns=create_time_ns,
                conversation_id=conversation_id,
            ),
            hold=hold,
        )
        return await self.send_create(request)

    async def send_create(self, request: pb.CreateMessageRequest) -> pb.CreateMessageResponse:
        """CreateMessage as given, retried like every call (safe only when it names its id)."""
        return await self.call(
            "CreateMessage",
            lambda timeout: self.stub.CreateMessage(request, timeout=timeout),
            message_id=request.message.id,
        )

    async def get(self, message_id: str) -> pb.Message:
        """One message by id; NotFound when no message has it."""
        request = pb.GetMessageRequest(id=message_id)
        response = await self.call(
            "GetMessage",
            lambda timeout: self.stub.GetMessage(request, timeout=timeout),
            message_id=message_id,
        )
        return response.message

    async def delete(self, message_id: str) -> pb.DeleteMessageResponse:
        """Deletes a message and its reply (DeleteMessage, admin): their tombstones stay.
        Idempotent: `already_deleted` says an earlier call did it. NotFound when no message
        has the id."""
        request = pb.DeleteMessageRequest(id=message_id)
        return await self.call(
            "DeleteMessage",
            lambda timeout: self.stub.DeleteMessage(request, timeout=timeout),
            message_id=message_id,
        )

    async def approve(self, message_id: str) -> pb.Message:
        """Approves a HELD message (ApproveMessage, admin): PENDING, delivered at once.
        FailedPrecondition [NOT_HELD] when it is not HELD; NotFound when it is not there
        (reason MESSAGE_DELETED when it was deleted)."""
        request = pb.ApproveMessageRequest(id=message_id)
        response = await self.call(
            "ApproveMessage",
            lambda timeout: self.stub.ApproveMessage(request, timeout=timeout),
            message_id=message_id,
        )
        return response.message

    async def list(self, **filters: Unpack[ListFilters]) -> AsyncIterator[Page]:
        """The matching messages, a page at a time (ListMessages), following page tokens to
        the end or to `limit` messages. Filters: `state`, `reply_to`, `conversation_id`,
        `after_sequence`,
        `limit`, `newest_first`, `page_size` (see ListFilters)."""
        walk = PageWalk(**filters)
        while walk.request is not None:
            response = await self._list_page(walk.request)
            walk.advance(response)
            if response.messages:
                yield list(response.messages)

    async def follow(
        self, *, from_start: bool = False, conversation_id: str = ""
    ) -> AsyncIterator[pb.Message]:
        """Each message and reply as it arrives, from now on (or from the first one), pushed
        by the store (WatchMessages), as `ackbot tail` follows them; only those of
        `conversation_id` when it is given (WatchMessages has no filter, so the others are
        read and dropped here). Each watch starts after
        the last message seen, so when one ends with UNAVAILABLE (a store restart) the next,
        opened with backoff, misses nothing and repeats nothing. It ends only when the caller
        stops iterating; any other refusal is raised as a typed StoreError."""
        last = 0
        if not from_start:
            response = await self._list_page(LAST_MESSAGE_REQUEST)
            last = response.messages[0].sequence if response.messages else 0
        retry = 0
        while True:
            call = self.stub.WatchMessages(pb.WatchMessagesRequest(after_sequence=last))
            try:
                async for event in call:
                    retry = 0
                    if event.type == pb.WATCH_EVENT_TYPE_CREATED:
                        last = event.message.sequence
                        if not conversation_id or event.message.conversation_id == conversation_id:
                            yield event.message
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(exc) from None
            finally:
                call.cancel()
            await asyncio.sleep(RECONNECT_BACKOFF.delay(retry))  # backoff before watching again
            retry += 1

    async def erase_author(
        self, author: str, *, on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Deletes every message of `author` and the replies to them (EraseAuthor; tombstones
        stay); returns how many. `on_progress` gets the count so far after each batch. Retried
        like every call: an erasure cut short is finished by the next attempt."""
        request = pb.EraseAuthorRequest(author=author)
        return await self._progress(
            "EraseAuthor", lambda: self.stub.EraseAuthor(request), "deleted_count", on_progress
        )

    async def purge(
        self,
        state: pb.MessageState,
        older_than_seconds: float,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Removes for good the messages in `state` (PROCESSED with their replies, DEAD, or
        DELETED tombstones) received more than `older_than_seconds` ago (PurgeMessages);
        returns how many, replies included. `on_progress` as for erase_author."""
        request = pb.PurgeMessagesRequest(state=state)
        request.older_than.FromNanoseconds(round(older_than_seconds * 1e9))
        return await self._progress(
            "PurgeMessages", lambda: self.stub.PurgeMessages(request), "removed_count", on_progress
        )

    async def _progress(
        self,
        what: str,
        open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
        field: str,
        on_progress: Callable[[int], None] | None,
    ) -> int:
        """Follows a progress stream to `done`, retried like every call; the counts of
        attempts cut short add up (each attempt counts only what it did itself)."""
        earlier = 0  # what attempts cut short did

        async def attempt(_per_call_seconds: float) -> int:
            # No deadline (that one is for unary calls): progress keeps coming as long as it
            # runs, and the channel's keepalive finds a store that went away.
            nonlocal earlier
            count = 0
            call = open_call()
            try:
                async for response in call:
                    count = getattr(response, field)
                    if on_progress is not None:
                        on_progress(earlier + count)
                    if response.done:
                        return earlier + count
            finally:
                call.cancel()
                earlier += count
            return earlier  # the store ends every stream with `done` or an error status

        return await self.call(what, attempt)

    async def _list_page(self, request: pb.ListMessagesRequest) -> pb.ListMessagesResponse:
        return await self.call(
            "ListMessages", lambda timeout: self.stub.ListMessages(request, timeout=timeout)
        )


def message(
    text: str,
    *,
    author: str,
    id: str = "",
    create_time_ns: int | None = None,
    conversation_id: str = "",
) -> pb.Message:
    """The message of a create, with an id chosen here when none is given."""
    proto = pb.Message(id=id or new_id(), author=author, text=text, conversation_id=conversation_id)
    if create_time_ns is not None:
        proto.create_time.FromNanoseconds(create_time_ns)
    return proto
