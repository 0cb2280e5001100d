"""WatchMessages: what happens to messages, pushed to operators as it happens.

A watcher sees two things, in this order each time it wakes:
1. new messages, followed in the database by `sequence` (the way `ListMessages` with
   `after_sequence` follows them), so it sees every store's creates, replies included, without a
   gap: sequences commit in order (on PostgreSQL, inserting transactions take turns);
2. the messages whose state this store changed meanwhile, each read again and sent as it is now.

Following first means a message is never shown changed before it is shown created. A change is
only a message id: reading the message when it is sent shows its state now, so a burst of
changes to one message costs one line, and one line never shows a state it no longer has.

Nothing here runs unless someone watches: with no watcher, a change is one empty loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ackbot.store.errors import NotFound, WatchFellBehind
from ackbot.store.models import State
from ackbot.store.repository import MessageRepository
from ackbot.store.types import StoredMessage

# Messages read per page while following new ones.
FOLLOW_PAGE = 100
# Changed messages a watcher may have waiting to be sent before it is ended as fallen behind
# (it is not reading, or reads slower than the store changes messages).
MAX_PENDING_CHANGES = 10_000
# Per watcher, the last state sent for this many messages: a change that leaves a message as it
# was last shown (a create that another write already showed) is not sent twice.
REMEMBERED_STATES = 10_000


class EventType(enum.Enum):
    CREATED = "created"
    STATE_CHANGED = "state_changed"
    DELETED = "deleted"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    message: StoredMessage


@dataclass(eq=False)
class _Watcher:
    changed: OrderedDict[str, None] = field(default_factory=OrderedDict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False


class WatchHub:
    """Every open watch; the manager tells it what changed."""

    def __init__(self, repository: MessageRepository) -> None:
        self._repository = repository
        self._watchers: set[_Watcher] = set()

    def created(self) -> None:
        """Messages may have been stored (here, or by another store): watchers follow."""
        for watcher in self._watchers:
            watcher.wakeup.set()

    def changed(self, message_id: str) -> None:
        for watcher in self._watchers:
            watcher.changed[message_id] = None
            watcher.changed.move_to_end(message_id)
            watcher.wakeup.set()

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.closing = True
            watcher.wakeup.set()

    @contextlib.asynccontextmanager
    async def watch(self, after_sequence: int | None) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """The events of one watch, from after `after_sequence` (None: from now on); they end
        when the store shuts down."""
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            if after_sequence is None:
                newest = await self._repository.list_messages(newest_first=True, limit=1)
                after_sequence = newest[0].sequence if newest else 0
            yield self._events(watcher, after_sequence)
        finally:
            self._watchers.discard(watcher)

    async def _events(self, watcher: _Watcher, cursor: int) -> AsyncIterator[WatchEvent]:
        shown: OrderedDict[str, State] = OrderedDict()

        def first_showing(message: StoredMessage) -> bool:
            if shown.get(message.id) is message.state:
                return False
            shown[message.id] = message.state
            shown.move_to_end(message.id)
            if len(shown) > REMEMBERED_STATES:
                shown.popitem(last=False)
            return True

        while not watcher.closing:
            watcher.wakeup.clear()
            while True:
                page = await self._repository.list_messages(
                    after_sequence=cursor, limit=FOLLOW_PAGE
                )
                for message in page:
                    cursor = message.sequence
                    first_showing(message)
                    yield WatchEvent(EventType.CREATED, message)
                if len(page) < FOLLOW_PAGE:
                    break
            while watcher.changed and not watcher.closing:
                if len(watcher.changed) > MAX_PENDING_CHANGES:
                    raise WatchFellBehind(MAX_PENDING_CHANGES)
                message_id, _ = watcher.changed.popitem(last=False)
                try:
                    message = await self._repository.get_message(message_id, tombstones=True)
                except NotFound:
                    continue
                # Not followed yet: the next follow shows it, as it is then.
                if message.sequence > cursor or not first_showing(message):
                    continue
                deleted = message.state is State.DELETED
                yield WatchEvent(EventType.DELETED if deleted else EventType.STATE_CHANGED, message)
            if not watcher.closing:
                await watcher.wakeup.wait()
