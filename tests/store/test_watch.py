"""WatchMessages' events (watch.py through MessageManager): arrivals followed in the database,
then the changes of state this store makes, on the real databases and the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ackbot.store import watch as watch_module
from ackbot.store.errors import WatchFellBehind
from ackbot.store.manager import MessageManager
from ackbot.store.models import State
from ackbot.store.types import NewMessage
from ackbot.store.watch import EventType, WatchEvent

from .test_manager import DEADLINE, LEASE_NS, Consumer, create

CREATED, CHANGED = EventType.CREATED, EventType.STATE_CHANGED


class Watch:
    """One open watch, read by a task of its own into a queue."""

    def __init__(self, manager: MessageManager, after_sequence: int | None) -> None:
        self.events: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self.registered = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(manager, after_sequence))

    async def _run(self, manager: MessageManager, after_sequence: int | None) -> None:
        try:
            async with manager.watch(after_sequence) as events:
                self.registered.set()
                async for event in events:
                    self.events.put_nowait(event)
        except Exception as exc:
            self.error = exc
            self.registered.set()

    async def take(self, count: int) -> list[tuple[EventType, str, State]]:
        taken = []
        async with asyncio.timeout(DEADLINE):
            for _ in range(count):
                event = await self.events.get()
                taken.append((event.type, event.message.id, event.message.state))
        return taken


@pytest.fixture
async def manager(make_repo, clock) -> AsyncIterator[MessageManager]:
    repo = await make_repo(max_attempts=1)
    manager = MessageManager(repo, clock_ns=clock, call_at=clock.call_at)
    yield manager
    await manager.close_streams(handler_wait_seconds=DEADLINE)


async def open_watch(manager: MessageManager, after_sequence: int | None = None) -> Watch:
    watch = Watch(manager, after_sequence)
    async with asyncio.timeout(DEADLINE):
        await watch.registered.wait()
    return watch


async def test_a_message_from_arrival_to_dead_to_processed(manager):
    await create(manager, "before")
    watch = await open_watch(manager)  # from now: "before" is not shown
    await create(manager, "poison")
    assert await watch.take(1) == [(CREATED, "poison", State.PENDING)]

    bot = Consumer(manager, "bot", max_in_flight=2, lease_ns=LEASE_NS)
    deliveries = {d.message.id: d for d in await bot.next()}
    assert sorted(await watch.take(2)) == [
        (CHANGED, "before", State.LEASED),
        (CHANGED, "poison", State.LEASED),
    ]
    await manager.release(
        "poison", deliveries["poison"].lease_token, reason="boom", retry_after_ns=0
    )
    assert await watch.take(1) == [(CHANGED, "poison", State.DEAD)]
    reply = NewMessage(author="bot", text="hi")
    await manager.mark_processed("before", reply, deliveries["before"].lease_token)
    first, second = await watch.take(2)
    # The reply is followed first (arrivals come before changes), then the original's change.
    assert (first[0], first[2]) == (CREATED, State.PROCESSED)
    assert second == (CHANGED, "before", State.PROCESSED)

    bot.task.cancel()  # no stream left to take the requeued message
    await asyncio.gather(bot.task, return_exceptions=True)
    await manager.requeue("poison")
    assert await watch.take(1) == [(CHANGED, "poison", State.PENDING)]


async def test_after_sequence_replays_what_came_after_it(manager):
    await create(manager, "a", "b", "c")
    listed = await manager.list_messages(
        after_sequence=0,
        before_sequence=None,
        newest_first=False,
        limit=10,
        state=None,
        reply_to=None,
    )
    watch = await open_watch(manager, after_sequence=listed[0].sequence)
    assert await watch.take(2) == [(CREATED, "b", State.PENDING), (CREATED, "c", State.PENDING)]


async def test_a_change_that_leaves_the_state_as_shown_is_not_sent(manager):
    watch = await open_watch(manager)
    await create(manager, "a")
    manager.watches.changed("a")  # e.g. a write that left it PENDING
    await create(manager, "b")
    assert await watch.take(2) == [(CREATED, "a", State.PENDING), (CREATED, "b", State.PENDING)]


async def test_a_watcher_that_falls_behind_is_ended(manager, monkeypatch):
    monkeypatch.setattr(watch_module, "MAX_PENDING_CHANGES", 2)
    async with manager.watch(None) as events:
        await create(manager, "a", "b", "c")
        iterator = aiter(events)
        for _ in range(3):  # the arrivals, read while the changes pile up
            await anext(iterator)
        for message_id in ("a", "b", "c"):
            manager.watches.changed(message_id)
        with pytest.raises(WatchFellBehind):
            await anext(iterator)


async def test_shutdown_ends_every_watch(manager):
    watch = await open_watch(manager)
    await manager.close_streams(handler_wait_seconds=DEADLINE)
    async with asyncio.timeout(DEADLINE):
        await watch.task
    assert watch.error is None  # ended, not failed: the servicer says SHUTTING_DOWN
