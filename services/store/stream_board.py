"""The delivery manager's ledger of open streams: which stream holds which lease, how much room
each has, and when each wakes.

Work is pushed, never polled: CreateMessage, a release, a lapsed lease or a retry_after ending
wakes the streams, and each awake stream claims what it has room for. Nothing here touches the
database or decides anything; the manager (manager.py) runs the claim loop and tells the board
what happened, and each stream's own state moves only through its methods (stream.py). The
board keeps what spans the streams: which stream holds each lease, and the timed wakes.

Why an Event per stream and not one Condition: a stream clears its event *before* it claims, so
a wake that lands while it is querying is kept for its next wait and never lost.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Protocol

from ackbot.store.stream import Stream
from ackbot.store.types import Lease

# Timed wakes are rounded up to this step so that a burst of leases sharing an expiry costs one
# wake, not one per message.
WAKE_STEP_NS = 10_000_000


class Timer(Protocol):
    def cancel(self) -> None: ...


# Calls the callback once the clock reads the given time (ns), unless the timer is cancelled.
CallAt = Callable[[int, Callable[[], None]], Timer]


class StreamBoard:
    """`clock_ns` tells the time; `call_at`, when given, runs timed wakes on the same clock (a
    test's fake clock fires them when it is moved on). By default they run on the event loop."""

    def __init__(
        self,
        clock_ns: Callable[[], int] = time.time_ns,
        call_at: CallAt | None = None,
        on_lapse: Callable[[], None] | None = None,
    ) -> None:
        self._now_ns = clock_ns
        # Told of each lease that lapses on a stream before its client answered for it.
        self._on_lapse = on_lapse
        self._call_at = call_at or self._call_at_on_loop
        self._streams: set[Stream] = set()
        self._holder: dict[str, Stream] = {}  # message id -> stream holding its lease
        self._timed: list[int] = []  # heap of wall-clock ns at which to wake everyone
        self._timed_set: set[int] = set()
        self._timer: Timer | None = None
        self._timer_at = 0

    @property
    def streams(self) -> frozenset[Stream]:
        return frozenset(self._streams)

    @property
    def has_streams(self) -> bool:
        return bool(self._streams)

    def open_stream(self, stream: Stream) -> None:
        self._streams.add(stream)

    def close_stream(self, stream: Stream) -> list[Lease]:
        """Forgets the stream; returns the leases it still held, for the caller to release."""
        self._streams.discard(stream)
        leases = stream.closed()
        for lease in leases:
            if self._holder.get(lease.message_id) is stream:
                del self._holder[lease.message_id]
        return leases

    def is_open(self, stream: Stream) -> bool:
        return stream in self._streams

    def waiting_stream(self) -> tuple[Stream, int] | None:
        """A stream a create may claim for now, with its room (Stream.room_for_create): the one
        with the most room, so that new messages spread over the streams instead of filling
        the first."""
        best: tuple[Stream, int] | None = None
        for stream in self._streams:
            room = stream.room_for_create()
            if room > 0 and (best is None or room > best[1]):
                best = (stream, room)
        return best

    def holder(self, message_id: str) -> Stream | None:
        """The stream holding the message's lease, if any."""
        return self._holder.get(message_id)

    def room(self, stream: Stream) -> int:
        """How many more deliveries `stream` may send, its lapsed leases counted as lapsed."""
        for message_id in stream.lapse_due(self._now_ns()):
            if self._holder.get(message_id) is stream:
                del self._holder[message_id]
            if self._on_lapse is not None:
                self._on_lapse()
        return stream.room

    def leased(self, stream: Stream, message_id: str, token: str, expiry_ns: int) -> None:
        previous = self._holder.get(message_id)
        if previous is not None and previous is not stream:
            previous.forget(message_id)
        self._holder[message_id] = stream
        stream.hold(message_id, token, expiry_ns)
        self.wake_at(expiry_ns)

    def settled(self, message_id: str, token: str = "") -> None:
        """The message was processed or released: the stream holding it has room for one more,
        and so has the stream whose lapsed lease `token` was, if any."""
        stream = self._holder.pop(message_id, None)
        if stream is not None:
            stream.let_go(message_id)
        self.lapse_answered(message_id, token)

    def lapse_answered(self, message_id: str, token: str) -> None:
        """The client of a lapsed lease answered for it (with its token: a mark, or a release
        or an extension the store refused because the lease was gone): its slot is free."""
        if not token:
            return
        for stream in self._streams:
            stream.answer_lapse(message_id, token)

    def extended(self, message_id: str, token: str, expiry_ns: int) -> None:
        stream = self._holder.get(message_id)
        if stream is None:
            # The extension reached the database just before the lease's expiry, and a claim
            # counted it as lapsed in between: the stream holds it again.
            stream = next((s for s in self._streams if s.lapsed.get(message_id) == token), None)
            if stream is None:
                return
            self._holder[message_id] = stream
        stream.hold(message_id, token, expiry_ns)
        self.wake_at(expiry_ns)

    def wake_all(self) -> None:
        """New work may be claimable (a create, a release, a timed wake): every stream looks."""
        for stream in self._streams:
            stream.wake(work=True)

    def wake_at(self, at_ns: int) -> None:
        """Wakes every stream at wall-clock time `at_ns` (a lease expiry or a retry_after)."""
        at_ns = -(-at_ns // WAKE_STEP_NS) * WAKE_STEP_NS
        if at_ns in self._timed_set:
            return
        self._timed_set.add(at_ns)
        heapq.heappush(self._timed, at_ns)
        self._arm()

    def _arm(self) -> None:
        if not self._timed:
            return
        first = self._timed[0]
        if self._timer is not None and self._timer_at <= first:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._call_at(first, self._on_timer)
        self._timer_at = first

    def _call_at_on_loop(self, at_ns: int, callback: Callable[[], None]) -> Timer:
        delay = max(at_ns - self._now_ns(), 0) / 1e9
        return asyncio.get_running_loop().call_later(delay, callback)

    def _on_timer(self) -> None:
        self._timer = None
        # The loop's monotonic clock and the wall clock drift apart by microseconds; without
        # the slack an entry could stay unpopped and re-arm the timer at zero delay.
        now = self._now_ns() + WAKE_STEP_NS // 10
        while self._timed and self._timed[0] <= now:
            self._timed_set.discard(heapq.heappop(self._timed))
        self.wake_all()
        self._arm()

    def close(self) -> None:
        """Tells every stream to end (store shutdown) and stops the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in self._streams:
            stream.close()
