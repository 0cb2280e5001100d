"""Dispatcher: which stream holds which lease, how much room each has, and when streams wake."""

from __future__ import annotations

import asyncio
import time

from ackbot.store.dispatcher import Dispatcher, StreamState
from ackbot.store.repository import Lease

from .conftest import SECOND_NS, FakeClock


def stream(name: str = "bot", max_in_flight: int = 3) -> StreamState:
    return StreamState(consumer=name, max_in_flight=max_in_flight, lease_ns=SECOND_NS)


async def test_a_lapsed_lease_keeps_its_slot_until_the_client_answers_for_it():
    clock = FakeClock()
    dispatcher = Dispatcher(clock_ns=clock)
    s, other = stream(max_in_flight=3), stream("other")
    dispatcher.open_stream(s)
    dispatcher.open_stream(other)
    try:
        assert dispatcher.room(s) == 3
        dispatcher.leased(s, "a", "ta", clock.now_ns + SECOND_NS)
        dispatcher.leased(s, "b", "tb", clock.now_ns + 5 * SECOND_NS)
        assert dispatcher.room(s) == 1

        clock.advance(ns=SECOND_NS)  # "a" lapses exactly now

        # A hung client must not be refilled: "a" no longer holds its message, but its slot.
        assert dispatcher.room(s) == 1
        assert set(s.outstanding) == {"b"}
        assert s.lapsed == {"a": "ta"}
        # "a" goes to another stream, whose bot processes it: that frees nothing on the first.
        dispatcher.leased(other, "a", "ta2", clock.now_ns + SECOND_NS)
        dispatcher.settled("a", "ta2")
        assert dispatcher.room(s) == 1
        # The first client answers for "a" with its own token: slot back.
        s.wakeup.clear()
        dispatcher.lapse_answered("a", "ta")
        assert s.wakeup.is_set()
        assert dispatcher.room(s) == 2
        assert dispatcher.room(other) == other.max_in_flight
    finally:
        dispatcher.close()


async def test_a_mark_with_the_lapsed_leases_token_frees_its_slot_and_the_holders():
    clock = FakeClock()
    dispatcher = Dispatcher(clock_ns=clock)
    first, second = stream("first", 1), stream("second", 1)
    dispatcher.open_stream(first)
    dispatcher.open_stream(second)
    try:
        dispatcher.leased(first, "a", "t1", clock.now_ns + SECOND_NS)
        clock.advance(1)
        assert dispatcher.room(first) == 0
        dispatcher.leased(second, "a", "t2", clock.now_ns + SECOND_NS)

        dispatcher.settled("a", "t1")  # the first bot's late reply, carrying its token

        assert dispatcher.room(first) == 1
        assert dispatcher.room(second) == 1
    finally:
        dispatcher.close()


async def test_an_extension_that_raced_the_lapse_holds_the_message_again():
    clock = FakeClock()
    dispatcher = Dispatcher(clock_ns=clock)
    s = stream(max_in_flight=2)
    dispatcher.open_stream(s)
    try:
        dispatcher.leased(s, "a", "ta", clock.now_ns + SECOND_NS)
        clock.advance(1)
        dispatcher.room(s)  # counts "a" as lapsed
        dispatcher.extended("a", "ta", clock.now_ns + SECOND_NS)

        assert s.outstanding == {"a": ("ta", clock.now_ns + SECOND_NS)}
        assert s.lapsed == {}
        assert dispatcher.room(s) == 1
    finally:
        dispatcher.close()


async def test_settled_frees_room_and_wakes_the_holding_stream_only():
    clock = FakeClock()
    dispatcher = Dispatcher(clock_ns=clock)
    holder, other = stream("holder", 2), stream("other", 2)
    dispatcher.open_stream(holder)
    dispatcher.open_stream(other)
    try:
        dispatcher.leased(holder, "a", "ta", clock.now_ns + SECOND_NS)
        dispatcher.leased(holder, "b", "tb", clock.now_ns + SECOND_NS)
        assert dispatcher.room(holder) == 0
        holder.wakeup.clear()
        other.wakeup.clear()

        dispatcher.settled("a")

        assert dispatcher.room(holder) == 1
        assert holder.wakeup.is_set()
        assert not other.wakeup.is_set()
        dispatcher.settled("unknown")  # a message no stream holds: harmless
        assert holder.leases() == [Lease("b", "tb")]
    finally:
        dispatcher.close()


async def test_a_lease_moving_to_another_stream_leaves_the_first():
    clock = FakeClock()
    dispatcher = Dispatcher(clock_ns=clock)
    first, second = stream("first"), stream("second")
    dispatcher.open_stream(first)
    dispatcher.open_stream(second)
    try:
        dispatcher.leased(first, "a", "t1", clock.now_ns + SECOND_NS)
        dispatcher.leased(second, "a", "t2", clock.now_ns + 2 * SECOND_NS)

        assert first.outstanding == {}
        assert second.outstanding == {"a": ("t2", clock.now_ns + 2 * SECOND_NS)}
        dispatcher.extended("a", "t2", clock.now_ns + 9 * SECOND_NS)
        assert second.outstanding["a"] == ("t2", clock.now_ns + 9 * SECOND_NS)
        assert dispatcher.close_stream(second) == [Lease("a", "t2")]
        assert second.outstanding == {}
        assert dispatcher.streams == frozenset({first})
        second.wakeup.clear()
        dispatcher.settled("a")
        assert not second.wakeup.is_set()
    finally:
        dispatcher.close()


async def test_wake_at_wakes_every_stream_at_about_the_given_time():
    dispatcher = Dispatcher()
    streams = [stream("a"), stream("b")]
    for s in streams:
        dispatcher.open_stream(s)
    try:
        start = time.monotonic()
        dispatcher.wake_at(time.time_ns() + 50_000_000)
        assert not any(s.wakeup.is_set() for s in streams)

        async with asyncio.timeout(2):
            await asyncio.gather(*(s.wakeup.wait() for s in streams))

        elapsed = time.monotonic() - start
        # Wakes are rounded up to a 10 ms step; a little slack for the loop's clock.
        assert 0.045 <= elapsed < 1.0
    finally:
        dispatcher.close()


async def test_wake_at_keeps_later_wakes_after_an_earlier_one_fires():
    dispatcher = Dispatcher()
    s = stream()
    dispatcher.open_stream(s)
    try:
        now = time.time_ns()
        dispatcher.wake_at(now + 300_000_000)
        dispatcher.wake_at(now + 20_000_000)  # earlier: re-arms the timer
        dispatcher.wake_at(now + 20_000_000)  # duplicate: one wake
        start = time.monotonic()

        async with asyncio.timeout(2):
            await s.wakeup.wait()
        first = time.monotonic() - start
        s.wakeup.clear()
        async with asyncio.timeout(2):
            await s.wakeup.wait()
        second = time.monotonic() - start

        assert first < 0.25
        assert second >= 0.29
    finally:
        dispatcher.close()


async def test_wake_at_in_the_past_wakes_at_once():
    dispatcher = Dispatcher()
    s = stream()
    dispatcher.open_stream(s)
    try:
        dispatcher.wake_at(time.time_ns() - SECOND_NS)
        async with asyncio.timeout(0.5):
            await s.wakeup.wait()
    finally:
        dispatcher.close()


async def test_a_lease_wakes_the_streams_when_it_expires():
    dispatcher = Dispatcher()
    holder, waiting = stream("holder"), stream("waiting")
    dispatcher.open_stream(holder)
    dispatcher.open_stream(waiting)
    try:
        dispatcher.leased(holder, "a", "t", time.time_ns() + 30_000_000)
        async with asyncio.timeout(2):
            await waiting.wakeup.wait()
        # The message may go elsewhere now; the holder's slot stays taken (see the next tests).
        assert dispatcher.room(holder) == holder.max_in_flight - 1
        assert holder.lapsed == {"a": "t"}
    finally:
        dispatcher.close()


async def test_wake_all_wakes_open_streams():
    dispatcher = Dispatcher()
    a, b, closed = stream("a"), stream("b"), stream("closed")
    for s in (a, b, closed):
        dispatcher.open_stream(s)
    dispatcher.close_stream(closed)

    dispatcher.wake_all()

    assert a.wakeup.is_set()
    assert b.wakeup.is_set()
    assert not closed.wakeup.is_set()


async def test_close_marks_every_stream_closing_wakes_it_and_stops_the_timer():
    dispatcher = Dispatcher()
    streams = [stream("a"), stream("b")]
    for s in streams:
        dispatcher.open_stream(s)
    dispatcher.wake_at(time.time_ns() + 20_000_000)

    dispatcher.close()

    assert all(s.closing for s in streams)
    assert all(s.wakeup.is_set() for s in streams)
    # The timer is cancelled: nothing is left to wake a stream after close.
    assert dispatcher._timer is None


async def test_a_settle_adds_room_but_only_wakes_with_new_work_says_work_may_exist():
    clock = FakeClock()
    dispatcher = Dispatcher(clock_ns=clock)
    s = stream(max_in_flight=2)
    dispatcher.open_stream(s)
    try:
        dispatcher.leased(s, "a", "ta", clock.now_ns + SECOND_NS)
        s.work_may_exist = False  # the stream's last claim came back short

        dispatcher.settled("a")

        assert s.wakeup.is_set()
        assert not s.work_may_exist
        dispatcher.wake_all()
        assert s.work_may_exist
    finally:
        dispatcher.close()
