"""The hub: ONE store watch (WatchMessages) per web process, fanned out to every viewer of every
thread, so that a store never holds a stream per browser.

The watch sees every message of the database; the hub keeps those of the front door's threads
(conversations "web:..."), turns each event into the comment as it now is (with its reply once
there is one) and puts it on the queue of each viewer of that thread. A comment HELD for
moderation is not sent (its approval is, as a change of state), and a deleted one is sent as
a DELETED comment, so that readers take it off the page. A viewer that falls more
than `VIEWER_QUEUE` comments behind is dropped with RESOURCE_EXHAUSTED (it lists and watches
again) rather than letting one slow browser grow the process's memory.

When the watch ends (a store restart), the next one, opened with backoff, starts after the last
message seen, so no comment or reply is missed; the state changes made in between (a comment
being answered) are, which a reply arriving later corrects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc

from ackbot.client import Client, StoreError
from ackbot.common.backoff import RECONNECT_BACKOFF
from ackbot.v1 import message_store_pb2 as pb
from ackbot.web import comments
from ackbot.web.metrics import WebMetrics
from ackbot.web.v1 import comments_pb2 as web

log = logging.getLogger(__name__)

VIEWER_QUEUE = 256
# Originals and replies remembered by id, so that a reply's event can carry its original (and
# an original's, its reply) without asking the store; older ones are fetched when needed.
REMEMBERED = 10_000


@dataclass(eq=False)
class Viewer:
    """One WatchThread stream: its queue of comments; None on the queue ends it, with
    `ended_because` as the reason (None: the front door is stopping)."""

    thread: str
    queue: asyncio.Queue[web.Comment | None] = field(
        default_factory=lambda: asyncio.Queue(VIEWER_QUEUE + 1)
    )
    fell_behind: bool = False


class Hub:
    def __init__(self, client: Client, metrics: WebMetrics) -> None:
        self._client = client
        self._metrics = metrics
        self._viewers: dict[str, set[Viewer]] = {}
        self._messages: OrderedDict[str, pb.Message] = OrderedDict()
        self._replies: OrderedDict[str, pb.Message] = OrderedDict()  # by the original's id
        self._last_sequence: int | None = None
        self.connected = asyncio.Event()
        self._closing = False

    # -- viewers --------------------------------------------------------------------------------

    def subscribe(self, thread: str) -> Viewer:
        viewer = Viewer(thread)
        self._viewers.setdefault(thread, set()).add(viewer)
        self._metrics.viewers.inc()
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        viewers = self._viewers.get(viewer.thread)
        if viewers is not None and viewer in viewers:
            viewers.discard(viewer)
            self._metrics.viewers.dec()
            if not viewers:
                del self._viewers[viewer.thread]

    def viewer_count(self) -> int:
        return sum(len(viewers) for viewers in self._viewers.values())

    def close(self) -> None:
        """Ends every viewer's stream (the front door is stopping)."""
        self._closing = True
        for viewers in list(self._viewers.values()):
            for viewer in list(viewers):
                self._end(viewer)

    def _end(self, viewer: Viewer) -> None:
        self.unsubscribe(viewer)
        while True:
            try:
                viewer.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                viewer.queue.get_nowait()  # the end matters more than what it would have read

    def _send(self, thread: str, shown: web.Comment) -> None:
        for viewer in list(self._viewers.get(thread, ())):
            if viewer.queue.qsize() >= VIEWER_QUEUE:
                viewer.fell_behind = True
                self._metrics.viewers_dropped.inc()
                self._end(viewer)
            else:
                viewer.queue.put_nowait(shown)

    # -- the store watch ------------------------------------------------------------------------

    async def run(self) -> None:
        """Watches the store until cancelled, again with backoff whenever a watch ends."""
        retry = 0
        while not self._closing:
            request = pb.WatchMessagesRequest()
            if self._last_sequence is not None:
                request.after_sequence = self._last_sequence
            call = self._client.stub.WatchMessages(request)
            try:
                headers = await call.initial_metadata()  # sent once the store registered the watch
                if call.done():
                    # A refusal (a missing or wrong token) comes as trailers only: its "headers"
                    # arrive with the end of the call, and the watch never opened.
                    raise grpc.aio.AioRpcError(
                        await call.code(),
                        headers,
                        await call.trailing_metadata(),
                        await call.details(),
                    )
                self.connected.set()
                self._metrics.store_watch_up.set(1)
                log.info("watching the store %s", self._client.address)
                async for event in call:
                    retry = 0
                    await self._on_event(event)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "the store watch ended: %s %s; watching again",
                    exc.code().name,
                    exc.details(),
                )
            finally:
                call.cancel()
                self.connected.clear()
                self._metrics.store_watch_up.set(0)
            await asyncio.sleep(RECONNECT_BACKOFF.delay(retry))
            retry += 1

    async def _on_event(self, event: pb.WatchMessagesResponse) -> None:
        message = event.message
        if event.type == pb.WATCH_EVENT_TYPE_CREATED:
            self._last_sequence = message.sequence
        thread = comments.thread_of(message)
        if thread is None:
            return
        if event.type == pb.WATCH_EVENT_TYPE_DELETED:
            # A tombstone: the readers take the comment (or the reply) off the page.
            self._messages.pop(message.id, None)
            if message.reply_to:
                self._replies.pop(message.reply_to, None)
            self._send(thread, comments.deleted(message))
            return
        if message.reply_to:
            _remember(self._replies, message.reply_to, message)
            if thread not in self._viewers:
                return
            original = self._messages.get(message.reply_to) or await self._fetch(message.reply_to)
            if original is not None:
                self._send(thread, comments.comment(original, message))
            return
        _remember(self._messages, message.id, message)
        if thread not in self._viewers or message.state == pb.MESSAGE_STATE_HELD:
            # Held for moderation: its author sees it from PostComment's answer, nobody else
            # until it is approved (then its change to PENDING comes here, for everyone).
            return
        reply = self._replies.get(message.id)
        if reply is None and message.reply_id:
            # Answered, and its reply's own event comes (or came before we remembered it):
            # that one carries both; a comment shown answered without its reply would flicker.
            reply = self._replies.get(message.id) or await self._fetch(message.reply_id)
        self._send(thread, comments.comment(message, reply))

    async def _fetch(self, message_id: str) -> pb.Message | None:
        try:
            return await self._client.get(message_id)
        except StoreError as exc:
            log.warning("message_id=%s could not be read for its thread: %s", message_id, exc)
            return None


def _remember(table: OrderedDict[str, pb.Message], key: str, message: pb.Message) -> None:
    table[key] = message
    table.move_to_end(key)
    while len(table) > REMEMBERED:
        table.popitem(last=False)
