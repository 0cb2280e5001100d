"""StreamBoard: which stream holds which lease, how much room each has, and when streams wake."""

from __future__ import annotations

import asyncio
import time

from ackbot.store.stream import Stream
from ackbot.store.stream_board import StreamBoard
from ackbot.store.types import Lease

from .conftest import SECOND_NS, FakeClock


def stream(name: str = "bot", max_in_flight: int = 3) -> Stream:
    return Stream(consumer=name, max_in_flight=max_in_flight, lease_ns=SECOND_NS)


async def test_a_lapsed_lease_keeps_its_slot_until_the_client_answers_for_it():
    clock = FakeClock()
    board = StreamBoard(clock_ns=clock)
    s, other = stream(max_in_flight=3), stream("other")
    board.open_stream(s)
    board.open_stream(other)
    try:
        assert board.room(s) == 3
        board.leased(s, "a", "ta", clock.now_ns + SECOND_NS)
        board.leased(s, "b", "tb", clock.now_ns + 5 * SECOND_NS)
        assert board.room(s) == 1

        clock.advance(ns=SECOND_NS)  # "a" lapses exactly now

        # A hung client must not be refilled: "a" no longer holds its message, but its slot.
        assert board.room(s) == 1
        assert set(s.outstanding) == {"b"}
        assert s.lapsed == {"a": "ta"}
        # "a" goes to another stream, whose bot processes it: that frees nothing on the first.
        board.leased(other, "a", "ta2", clock.now_ns + SECOND_NS)
        board.settled("a", "ta2")
        assert board.room(s) == 1
        # The first client answers for "a" with its own token: slot back.
        s.wakeup.clear()
        board.lapse_answered("a", "ta")
        assert s.wakeup.is_set()
        assert board.room(s) == 2
        assert board.room(other) == other.max_in_flight
    finally:
        board.close()


async def test_a_mark_with_the_lapsed_leases_token_frees_its_slot_and_the_holders():
    clock = FakeClock()
    board = StreamBoard(clock_ns=clock)
    first, second = stream("first", 1), stream("second", 1)
    board.open_stream(first)
    board.open_stream(second)
    try:
        board.leased(first, "a", "t1", clock.now_ns + SECOND_NS)
        clock.advance(1)
        assert board.room(first) == 0
        board.leased(second, "a", "t2", clock.now_ns + SECOND_NS)

        board.settled("a", "t1")  # the first bot's late reply, carrying its token

        assert board.room(first) == 1
        assert board.room(second) == 1
    finally:
        board.close()


async def test_an_extension_that_raced_the_lapse_holds_the_message_again():
    clock = FakeClock()
    board = StreamBoard(clock_ns=clock)
    s = stream(max_in_flight=2)
    board.open_stream(s)
    try:
        board.leased(s, "a", "ta", clock.now_ns + SECOND_NS)
        clock.advance(1)
        board.room(s)  # counts "a" as lapsed
        board.extended("a", "ta", clock.now_ns + SECOND_NS)

        assert s.outstanding == {"a": ("ta", clock.now_ns + SECOND_NS)}
        assert s.lapsed == {}
        assert board.room(s) == 1
    finally:
        board.close()


async def test_settled_frees_room_and_wakes_the_holding_stream_only():
    clock = FakeClock()
    board = StreamBoard(clock_ns=clock)
    holder, other = stream("holder", 2), stream("other", 2)
    board.open_stream(holder)
    board.open_stream(other)
    try:
        board.leased(holder, "a", "ta", clock.now_ns + SECOND_NS)
        board.leased(holder, "b", "tb", clock.now_ns + SECOND_NS)
        assert board.room(holder) == 0
        holder.wakeup.clear()
        other.wakeup.clear()

        board.settled("a")

        assert board.room(holder) == 1
        assert holder.wakeup.is_set()
        assert not other.wakeup.is_set()
        board.settled("unknown")  # a message no stream holds: harmless
        assert holder.leases() == [Lease("b", "tb")]
    finally:
        board.close()


async def test_a_lease_moving_to_another_stream_leaves_the_first():
    clock = FakeClock()
    board = StreamBoard(clock_ns=clock)
    first, second = stream("first"), stream("second")
    board.open_stream(first)
    board.open_stream(second)
    try:
        board.leased(first, "a", "t1", clock.now_ns + SECOND_NS)
        board.leased(second, "a", "t2", clock.now_ns + 2 * SECOND_NS)

        assert first.outstanding == {}
        assert second.outstanding == {"a": ("t2", clock.now_ns + 2 * SECOND_NS)}
        board.extended("a", "t2", clock.now_ns + 9 * SECOND_NS)
        assert second.outstanding["a"] == ("t2", clock.now_ns + 9 * SECOND_NS)
        assert board.close_stream(second) == [Lease("a", "t2")]
        assert second.outstanding == {}
        assert board.streams == frozenset({first})
        second.wakeup.clear()
        board.settled("a")
        assert not second.wakeup.is_set()
    finally:
        board.close()


async def test_wake_at_wakes_every_stream_at_about_the_given_time():
    board = StreamBoard()
    streams = [stream("a"), stream("b")]
    for s in streams:
        board.open_stream(s)
    try:
        start = time.monotonic()
        board.wake_at(time.time_ns() + 50_000_000)
        assert not any(s.wakeup.is_set() for s in streams)

        async with asyncio.timeout(2):
            await asyncio.gather(*(s.wakeup.wait() for s in streams))

        elapsed = time.monotonic() - start
        # Wakes are rounded up to a 10 ms step; a little slack for the loop's clock.
        assert 0.045 <= elapsed < 1.0
    finally:
        board.close()


async def test_wake_at_keeps_later_wakes_after_an_earlier_one_fires():
    board = StreamBoard()
    s = stream()
    board.open_stream(s)
    try:
        # The start first: taken after `now`, a pause between the two (a busy machine) would
        # count against the later wake, which is due 300 ms after `now`.
        start = time.monotonic()
        now = time.time_ns()
        board.wake_at(now + 300_000_000)
        board.wake_at(now + 20_000_000)  # earlier: re-arms the timer
        board.wake_at(now + 20_000_000)  # duplicate: one wake

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
        board.close()


async def test_wake_at_in_the_past_wakes_at_once():
    board = StreamBoard()
    s = stream()
    board.open_stream(s)
    try:
        board.wake_at(time.time_ns() - SECOND_NS)
        async with asyncio.timeout(0.5):
            await s.wakeup.wait()
    finally:
        board.close()


async def test_a_lease_wakes_the_streams_when_it_expires():
    board = StreamBoard()
    holder, waiting = stream("holder"), stream("waiting")
    board.open_stream(holder)
    board.open_stream(waiting)
    try:
        board.leased(holder, "a", "t", time.time_ns() + 30_000_000)
        async with asyncio.timeout(2):
            await waiting.wakeup.wait()
        # The message may go elsewhere now; the holder's slot stays taken (see the next tests).
        assert board.room(holder) == holder.max_in_flight - 1
        assert holder.lapsed == {"a": "t"}
    finally:
        board.close()


async def test_wake_all_wakes_open_streams():
    board = StreamBoard()
    a, b, closed = stream("a"), stream("b"), stream("closed")
    for s in (a, b, closed):
        board.open_stream(s)
    board.close_stream(closed)

    board.wake_all()

    assert a.wakeup.is_set()
    assert b.wakeup.is_set()
    assert not closed.wakeup.is_set()


async def test_close_marks_every_stream_closing_wakes_it_and_stops_the_timer():
    board = StreamBoard()
    streams = [stream("a"), stream("b")]
    for s in streams:
        board.open_stream(s)
    board.wake_at(time.time_ns() + 20_000_000)

    board.close()

    assert all(s.closing for s in streams)
    assert all(s.wakeup.is_set() for s in streams)
    # The timer is cancelled: nothing is left to wake a stream after close.
    assert board._timer is None


async def test_a_settle_adds_room_but_only_wakes_with_new_work_says_work_may_exist():
    clock = FakeClock()
    board = StreamBoard(clock_ns=clock)
    s = stream(max_in_flight=2)
    board.open_stream(s)
    try:
        board.leased(s, "a", "ta", clock.now_ns + SECOND_NS)
        s.work_may_exist = False  # the stream's last claim came back short

        board.settled("a")

        assert s.wakeup.is_set()
        assert not s.work_may_exist
        board.wake_all()
        assert s.work_may_exist
    finally:
        board.close()
