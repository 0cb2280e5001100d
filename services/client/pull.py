"""The stream side of a Consumer (the Pub/Sub subscriber's StreamingPullManager): one stream
at a time, opened again whenever it breaks, on the next store of the list after a reconnect
backoff that grows across stores (retry.py has the rule). Each stream is a generation: a
delivery remembers the one that brought it, since when that stream ends the store has taken
its leases back.

A Consume session where the store has it; a store that answers Consume with UNIMPLEMENTED
(older than it) gets a StreamUnprocessed stream at once and from then on (consumer.py says why
the fallback is kept). `drain()` tells the live session to send nothing more; `reopen()` leaves
a drained session (it stays open for the deliveries it still holds, `retire`) for a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from ackbot.client.router import StoreClient
from ackbot.client.streams import ConsumeSession, DeliveryStream
from ackbot.common.backoff import RECONNECT_BACKOFF, Backoff
from ackbot.v1 import message_store_pb2 as pb

log = logging.getLogger("ackbot.client.consumer")  # one logger for the consumer's story

# A store that refuses the stream (no token, another role's, no certificate with a role) has a
# configuration error, not an outage: no quick retry cures it, so it is tried slowly (1 s,
# doubling, at most 60 s), in case its tokens or the consumer's certificate change meanwhile.
REFUSED_CODES = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
REFUSED_BACKOFF = Backoff(initial_seconds=1.0, cap_seconds=60.0)
REFUSED_MIN_SECONDS = 1.0
# gRPC core's own text when a write races the server's refusal of the call (the open request
# sent as the store ends the call): the status is local, not the store's, and the next try
# shows the store's own answer, so it is not worth a warning.
LOCAL_CORE_ERROR = "Internal error from Core"


class StreamPull:
    """Runs the stream until `stop` is set, handing each delivery to `accept(delivery,
    generation)`; awaits `up(stream, generation)` when a stream opens and `down(generation)`
    when it ended; `retire(session, generation)` takes over a drained session left for a new
    one."""

    def __init__(
        self,
        store: StoreClient,
        *,
        consumer: str,
        max_in_flight: int,
        lease_seconds: float,
        consume: bool,
        stop: asyncio.Event,
        accept: Callable[[pb.Delivery, int], None],
        up: Callable[[DeliveryStream, int], Awaitable[None]],
        down: Callable[[int], Awaitable[None]],
        retire: Callable[[ConsumeSession, int], None],
        role: str = "consumer",
        credentials_hint: str = "check its token or client certificate",
    ) -> None:
        self._store = store
        self._consumer = consumer
        self._max_in_flight = max_in_flight
        self._lease_seconds = lease_seconds
        self._consume = consume
        self._stop = stop
        self._accept = accept
        self._up = up
        self._down = down
        self._retire = retire
        self._generation = 0
        # The generation of the open stream; None between streams.
        self.live_generation: int | None = None
        # The generation whose session was told to send nothing more.
        self.drained_generation: int | None = None
        self._stream: DeliveryStream | None = None
        self._reopen = asyncio.Event()
        # Clear while the consumer is paused (hold_back): a new session opens drained.
        self._taking = asyncio.Event()
        self._taking.set()
        self._role = role
        self._credentials_hint = credentials_hint
        # The code each store last refused the stream with, once said at ERROR.
        self._refused: dict[str, grpc.StatusCode] = {}

    @property
    def hold_back(self) -> bool:
        """Set by the consumer while it is paused: a new Consume session opens drained, and no
        StreamUnprocessed stream (which cannot be told to send nothing) is opened."""
        return not self._taking.is_set()

    @hold_back.setter
    def hold_back(self, value: bool) -> None:
        if value:
            self._taking.clear()
        else:
            self._taking.set()

    def live_session(self) -> ConsumeSession | None:
        """The open Consume session, if the live stream is one."""
        stream = self._stream
        if isinstance(stream, ConsumeSession) and self.live_generation == self._generation:
            return stream
        return None

    def drain(self) -> bool:
        """Tells the live session to send nothing more (once); False when there is no session
        to tell (no stream, or a StreamUnprocessed one)."""
        session = self.live_session()
        if session is None:
            return False
        if self.drained_generation != self._generation:
            session.drain()
            self.drained_generation = self._generation
        return True

    def reopen(self) -> None:
        """Leaves a drained live session for a new one (on resume); a no-op otherwise."""
        if self.drained_generation is not None and self.drained_generation == (
            self.live_generation
        ):
            self._reopen.set()

    def close(self) -> None:
        # Last of all: closing the stream makes the store release every lease it still holds.
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _uses_session(self, store: int) -> bool:
        return self._consume and self._store.has_consume(store)

    async def _until_taking(self) -> None:
        """Waits until the consumer resumes, or is stopped."""
        stop = asyncio.create_task(self._stop.wait())
        taking = asyncio.create_task(self._taking.wait())
        try:
            await asyncio.wait({stop, taking}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            taking.cancel()

    def _open(self, store: int) -> DeliveryStream:
        use_session = self._uses_session(store)
        open_stream = self._store.session if use_session else self._store.stream
        return open_stream(
            store=store,
            consumer=self._consumer,
            max_in_flight=self._max_in_flight,
            lease_seconds=self._lease_seconds,
        )

    async def run(self) -> None:
        stores = self._store.addresses
        store = 0
        retry = 0
        while not self._stop.is_set():
            if self.hold_back and not self._uses_session(store):
                # Paused: a StreamUnprocessed stream would deliver at once, and what it sent
                # would wait, leased, for the resume; better none until then.
                await self._until_taking()
                continue
            self._generation += 1
            generation = self._generation
            self._reopen.clear()
            self._stream = stream = self._open(store)
            if self.hold_back and isinstance(stream, ConsumeSession):
                # Paused before it opened: the drain goes in the first request (no await came
                # in between), so the store sends nothing on it and no attempt is spent.
                stream.drain()
                self.drained_generation = generation
            was_up = False
            retiring = False
            try:
                opened = await stream.wait_open()
                if (
                    not opened
                    and isinstance(stream, ConsumeSession)
                    and stream.end_code is grpc.StatusCode.UNIMPLEMENTED
                ):
                    log.info(
                        "store %s has no Consume; streaming with StreamUnprocessed and "
                        "settling by unary calls",
                        stream.address,
                    )
                    self._store.lacks_consume(store)
                    continue
                if opened:
                    was_up = True
                    retry = 0
                    self._refused.pop(stream.address, None)
                    self.live_generation = generation
                    await self._up(stream, generation)
                    if self.drained_generation == generation and not self.hold_back:
                        self._reopen.set()  # resumed while it opened drained: a new one
                    log.info(
                        "stream open to %s as consumer %s (%s)",
                        stream.address,
                        self._consumer,
                        "Consume" if isinstance(stream, ConsumeSession) else "StreamUnprocessed",
                    )
                retiring = await self._read(stream, generation)
            finally:
                if self._stream is stream:
                    self._stream = None
                if retiring and isinstance(stream, ConsumeSession):
                    self._retire(stream, generation)
                else:
                    stream.cancel()
            if retiring:
                continue  # resumed: a new session on the same store, at once
            problem = stream.end_reason
            if self.live_generation == generation:
                self.live_generation = None
            await self._down(generation)
            if self._stop.is_set():
                break
            # The backoff grows across stores too: when every store is down, each is tried no
            # more often than one reconnect pause times the number of stores.
            refused = stream.end_code in REFUSED_CODES
            local = (
                not was_up
                and stream.end_code is grpc.StatusCode.INTERNAL
                and LOCAL_CORE_ERROR in problem
            )
            if refused or (local and stream.address in self._refused):
                pause = max(REFUSED_BACKOFF.delay(retry), REFUSED_MIN_SECONDS)
            else:
                pause = RECONNECT_BACKOFF.delay(retry)
            retry += 1
            store = (store + 1) % len(stores)
            if refused:
                self._say_refused(stream, pause)
            elif local:
                log.debug(
                    "stream to %s failed in gRPC before it opened (%s); retry %d on %s in %.2fs",
                    stream.address,
                    problem,
                    retry,
                    stores[store],
                    pause,
                )
            elif was_up:
                log.warning(
                    "stream to %s broke (%s); reconnecting to %s in %.2fs",
                    stream.address,
                    problem,
                    stores[store],
                    pause,
                )
            else:
                log.warning(
                    "store %s unavailable (%s); retry %d on %s in %.2fs",
                    stream.address,
                    problem,
                    retry,
                    stores[store],
                    pause,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    def _say_refused(self, stream: DeliveryStream, pause: float) -> None:
        """One ERROR line per store and code: retrying says nothing new (DEBUG)."""
        assert stream.end_code is not None
        said = self._refused.get(stream.address)
        self._refused[stream.address] = stream.end_code
        log.log(
            logging.DEBUG if said is stream.end_code else logging.ERROR,
            "store %s refused the stream of role %s (%s): a configuration error, not an outage; "
            "%s. Trying again in %.1fs, at most every %gs",
            stream.address,
            self._role,
            stream.end_reason,
            self._credentials_hint,
            pause,
            REFUSED_BACKOFF.cap_seconds,
        )

    async def _read(self, stream: DeliveryStream, generation: int) -> bool:
        """Accepts the stream's deliveries until it ends; True when it was left for a new
        session on resume (it stays open for what it still holds)."""
        reopen = asyncio.create_task(self._reopen.wait())

        def detach(task: asyncio.Task[bool]) -> None:
            if task.cancelled() or self._stop.is_set():
                return
            if isinstance(stream, ConsumeSession):
                stream.detach()

        reopen.add_done_callback(detach)
        try:
            async for deliveries in stream:
                for delivery in deliveries:
                    self._accept(delivery, generation)
        finally:
            reopen.cancel()
        return self._reopen.is_set() and not self._stop.is_set()
