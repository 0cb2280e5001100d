"""One open stream (StreamUnprocessed or Consume): its state, and the transitions that change it.

`Stream` is the one owner of a stream's flags: the board (stream_board.py) and the manager
(manager.py) ask it to move, never set a field. A stream is, at any time:
- looking (its iteration runs) or parked (waiting for a wake: `park`);
- claiming or not (one claim at a time: the only thing that takes room away, so one at a time
  keeps every delivery within the room);
- open, draining (its client wants no more deliveries; its settlements still count) or closing
  (the store shuts down).
A create may claim for a stream only while it is parked, not claiming, not draining or closing,
and has room (`room_for_create`): a handler suspended elsewhere (sending, or dropped by its
client and not yet finalized) would sit on the messages.

`DeliveryStream` is the iteration the servicer reads batches from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ackbot.store.types import Delivery, Lease

if TYPE_CHECKING:
    from ackbot.store.stream_board import StreamBoard

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    """One StreamUnprocessed or Consume call: its limits, the leases it holds right now, and
    where it is in its claim loop. Fields are read by anyone, written only by the methods."""

    consumer: str
    max_in_flight: int
    lease_ns: int
    # message id -> (lease token, lease expiry ns)
    outstanding: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Ids whose lease lapsed on this stream before its client settled, extended or released
    # them. The message may go to another stream, but the slot stays taken: a client that lets
    # leases lapse may be hung (alive and connected, not reading), and refilling its slots would
    # spend its messages' attempts on a stream that never answers (NATS JetStream counts
    # redeliveries against max_ack_pending the same way).
    # Keyed by id, with the lapsed lease's token: only an answer carrying that token (so from
    # this stream's client, not from whichever bot got the message next) frees the slot.
    lapsed: dict[str, str] = field(default_factory=dict)
    # Claimed for this stream and on the board already, not yet handed to its iteration.
    claimed: list[Delivery] = field(default_factory=list)
    claiming: bool = False
    # Its iteration is parked, waiting for a wake (`park`).
    waiting: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # False once a claim came back short and nothing has made new work since: a settle then
    # only adds room, and claiming into an empty queue would cost a write transaction.
    work_may_exist: bool = True
    draining: bool = False
    closing: bool = False
    # Why the stream's own last claim failed: raised from the iteration, which ends the stream
    # with that error, as a claim made in the stream's own task would.
    claim_error: Exception | None = None

    # -- room -------------------------------------------------------------------------------

    @property
    def room(self) -> int:
        """How many more deliveries the stream may send, as of its last `lapse_due`. A lapsed
        lease no longer holds its message, but it keeps its slot until the client answers."""
        return self.max_in_flight - len(self.outstanding) - len(self.lapsed)

    def lapse_due(self, now_ns: int) -> list[str]:
        """Moves the leases that expired by `now_ns` to `lapsed`; returns their ids."""
        due = [mid for mid, (_, expiry) in self.outstanding.items() if expiry <= now_ns]
        for message_id in due:
            token, _ = self.outstanding.pop(message_id)
            self.lapsed[message_id] = token
        return due

    def room_for_create(self) -> int:
        """The room a create may claim into now (0: none): the claim-on-create rule."""
        if self.closing or self.draining or self.claiming or not self.waiting:
            return 0
        # `room` without `lapse_due`: a lapse leaves the room as it is; this runs for every
        # create.
        return max(self.room, 0)

    def set_limit(self, max_in_flight: int) -> None:
        """The client changed its window. A lower one takes nothing back: the stream gets no
        delivery until its unsettled ones are below it."""
        self.max_in_flight = max_in_flight
        self.wakeup.set()

    # -- leases -----------------------------------------------------------------------------

    def hold(self, message_id: str, token: str, expiry_ns: int) -> None:
        """The stream holds this lease (a claim granted it, or an extension moved it on)."""
        self.lapsed.pop(message_id, None)
        self.outstanding[message_id] = (token, expiry_ns)

    def let_go(self, message_id: str) -> None:
        """The message was settled: one more slot."""
        self.outstanding.pop(message_id, None)
        self.wakeup.set()

    def forget(self, message_id: str) -> None:
        """The message's lease is another stream's now (no wake: this one's room is unchanged
        until its own settle)."""
        self.outstanding.pop(message_id, None)

    def answer_lapse(self, message_id: str, token: str) -> bool:
        """The client answered for the lapsed lease `token` of the message: its slot is free.
        False when that is no lapsed lease of this stream."""
        if not token or self.lapsed.get(message_id) != token:
            return False
        del self.lapsed[message_id]
        self.wakeup.set()
        return True

    def leases(self) -> list[Lease]:
        return [Lease(mid, token) for mid, (token, _) in self.outstanding.items()]

    # -- the claim loop ---------------------------------------------------------------------

    @property
    def may_claim(self) -> bool:
        """Its own iteration may start a claim: none in flight, and not draining."""
        return not self.claiming and not self.draining

    def claim_started(self) -> None:
        self.claiming = True
        # Cleared before the claim, as the event is: work made during it sets it again.
        self.work_may_exist = False

    def claim_finished(self, deliveries: list[Delivery], *, full: bool) -> None:
        """The claim's leases are on the board: hand them to the iteration. A `full` claim (it
        got all it asked for) may have left more behind."""
        self.claiming = False
        self.claimed.extend(deliveries)
        if full:
            self.work_may_exist = True
        self.wakeup.set()

    def claim_failed(self, error: Exception | None) -> None:
        """The claim failed; `error` ends the stream (its own claim), None does not (one that
        rode with a create: the create's caller learns why)."""
        self.claiming = False
        if error is not None:
            self.claim_error = error
            self.wakeup.set()

    def take_claimed(self) -> list[Delivery]:
        deliveries, self.claimed = self.claimed, []
        return deliveries

    def take_claim_error(self) -> Exception | None:
        error, self.claim_error = self.claim_error, None
        return error

    def look(self) -> None:
        """The iteration looks at its state: a wake from now on is kept for its next park."""
        self.wakeup.clear()

    async def park(self) -> None:
        """Waits for a wake; a create may claim for the stream meanwhile."""
        self.waiting = True
        try:
            await self.wakeup.wait()
        finally:
            self.waiting = False

    def wake(self, *, work: bool = False) -> None:
        """Something changed for the stream; with `work`, new work may be claimable."""
        if work:
            self.work_may_exist = True
        self.wakeup.set()

    def drain(self) -> None:
        """No more deliveries: the client is stopping (Consume's drain)."""
        self.draining = True
        self.wakeup.set()

    def close(self) -> None:
        """The store shuts down: the iteration ends."""
        self.closing = True
        self.wakeup.set()

    def closed(self) -> list[Lease]:
        """The stream ended: returns the leases it still held, for the caller to release."""
        leases = self.leases()
        self.outstanding.clear()
        self.lapsed.clear()
        return leases


class DeliveryStream:
    """The deliveries of one open stream, as an async iterator of batches.

    Each batch is what the stream had room for, leased to it and counted as an attempt. The
    iteration ends only when the store shuts down; a client that goes away ends the stream by
    leaving `MessageManager.open_stream`. After `drain()` no batch comes any more, and the
    iteration waits for the shutdown.

    Claims run in tasks of their own (`MessageManager._start_claim`), never in the stream's: the
    stream's own when it has room and work may exist, or one that rides in the transaction of a
    CreateMessage while the stream waits. Either puts its leases on the board as it completes,
    whatever happened to the stream meanwhile, and hands them here through `Stream.claimed`.
    """

    def __init__(
        self,
        stream: Stream,
        board: StreamBoard,
        claim: Callable[[Stream, int], None],
        give_back: Callable[[list[Delivery]], Awaitable[None]],
    ) -> None:
        self._stream = stream
        self._board = board
        self._claim = claim
        self._give_back = give_back

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Changes the most unsettled deliveries the stream may hold (Consume's flow control)."""
        log.info(
            "stream window changed consumer=%s max_in_flight=%d",
            self._stream.consumer,
            max_in_flight,
        )
        self._stream.set_limit(max_in_flight)

    def drain(self) -> None:
        """No more deliveries on this stream: its client is stopping (Consume's drain)."""
        if not self._stream.draining:
            log.info("stream draining consumer=%s", self._stream.consumer)
        self._stream.drain()

    def __aiter__(self) -> DeliveryStream:
        return self

    async def __anext__(self) -> list[Delivery]:
        stream = self._stream
        while not stream.closing:
            stream.look()
            deliveries = stream.take_claimed()
            if deliveries:
                if stream.draining:
                    # The drain came while the claim ran: the client would only hand these
                    # back, so the store does, and gives their attempts back.
                    await self._give_back(deliveries)
                    continue
                return deliveries
            error = stream.take_claim_error()
            if error is not None:
                raise error
            if stream.may_claim:
                room = self._board.room(stream)
                if room > 0 and stream.work_may_exist:
                    self._claim(stream, room)
            await stream.park()
        raise StopAsyncIteration
