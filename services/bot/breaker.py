"""The bot's circuit breaker for its model server: stop taking work while the model is down
instead of spending every message's attempts on it (docs/semantics.md, "Whose failure it is").

`Breaker` is the state machine, with no I/O and an injected clock:

- CLOSED: the model answers; the bot takes work. A failure the responder blames on its
  dependency (`DependencyDown`: no connection, a refused key, no such model) opens it at once.
  Timeouts, cut connections and 5xx (blame SUSPECT) open it only when they hit `window`
  different messages in a row: one message that fails while others succeed is the message's
  (a poison message), and a success or a failure of the message's own (a 4xx about the request)
  in between starts the count again.
- OPEN: the bot stops taking work and hands back what it holds without spending an attempt; a
  probe is due after an exponential backoff (full jitter, ackbot.common.backoff).
- HALF_OPEN: a probe is running (also the state before the start-up check). It succeeds:
  CLOSED; it fails: OPEN, with the next probe further away. The backoff starts again only when a
  message is answered, so a model whose list answers but whose chat fails is not hammered.

`ModelGuard` runs a Breaker in the bot's event loop: it probes while open and calls the bot's
`on_open(change)` / `on_close(change)` awaitables, in order, once per change. `GuardedResponder`
puts the breaker around a responder, so that the delivery loop needs to know only that a
`DependencyDown` is handed back without an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ackbot.bot.responder import (
    Blame,
    DependencyDown,
    IncomingMessage,
    Responder,
    RetryLater,
    blame,
)
from ackbot.common.backoff import Backoff

log = logging.getLogger(__name__)

# Timeouts and 5xx of this many different messages in a row open the breaker (the default of
# --model-failure-window): two could be two poison messages, three in a row rarely are.
DEFAULT_WINDOW = 3
# Probes while open: from 0.5 s, doubling, at most --model-probe-max-seconds (full jitter).
DEFAULT_PROBE_MAX_SECONDS = 15.0
PROBE_INITIAL_SECONDS = 0.5
# Jitter may draw ~0; a probe is never sooner than this after the last one.
MIN_PROBE_SECONDS = 0.2
# The cause of an open by timeouts/5xx (a DependencyDown names its own cause).
CAUSE_ERRORS = "errors"
# The cause of a change that a probe or an answer made.
CAUSE_PROBE = "probe"
CAUSE_ANSWERED = "answered"
CAUSE_START = "start"
# Causes that only the operator can fix (the key, the model's name): logged as errors.
CONFIG_CAUSES = frozenset({"auth", "model_missing"})


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Decision(enum.Enum):
    """What the delivery loop does with a failed message."""

    # The message's failure: released with the reason, the attempt counts.
    SPEND = "spend"
    # The model's failure: handed back without a reason, the attempt is given back.
    HAND_BACK = "hand_back"
    # Busy (RetryLater): handed back after the server's delay, as before; the breaker is unmoved.
    BUSY = "busy"


@dataclass(frozen=True)
class Change:
    """One change of the breaker's state."""

    previous: State
    state: State
    # A short label (connect, auth, model_missing, errors, dependency, probe, answered, start).
    cause: str
    # What happened, naming the URL: the log line's and the health reason's text.
    detail: str
    url: str
    # An open or a close the bot acts on (and logs); False for a probe starting, or failing
    # while the breaker stays open.
    notable: bool = True


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return (
        text if isinstance(exc, (RetryLater, DependencyDown)) else f"{type(exc).__name__}: {text}"
    )


class Breaker:
    """The state machine (module docstring). Not thread-safe: one event loop drives it."""

    def __init__(
        self,
        url: str,
        *,
        window: int = DEFAULT_WINDOW,
        probe_max_seconds: float = DEFAULT_PROBE_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        listener: Callable[[Change], None] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be 1 or more, got {window}")
        self.url = url
        self.window = window
        self._backoff = Backoff(
            PROBE_INITIAL_SECONDS, max(probe_max_seconds, PROBE_INITIAL_SECONDS)
        )
        self._clock = clock
        self._rand = rand
        self._listeners: list[Callable[[Change], None]] = [listener] if listener else []
        # Before the start-up check nothing is known: the first probe decides.
        self._state = State.HALF_OPEN
        self._cause = CAUSE_START
        self._detail = f"not checked yet: {url}"
        # The different messages whose SUSPECT failures came in a row (insertion-ordered).
        self._suspects: dict[str, str] = {}
        # Failed probes since a message was last answered: the backoff's exponent.
        self._failed_probes = 0
        self._probe_at = 0.0
        # Whether the current open has had its log line: one line per open, not per probe.
        self._open_logged = False

    # -- what the loop reads ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def taking_work(self) -> bool:
        return self._state is State.CLOSED

    @property
    def cause(self) -> str:
        """Why the breaker is not closed (the cause label), or the last cause of a change."""
        return self._cause

    @property
    def reason(self) -> str:
        """Why the breaker is not closed, naming the URL; "" when closed."""
        return "" if self._state is State.CLOSED else self._detail

    def probe_in(self) -> float:
        """Seconds until the next probe is due (0 when due; only meaningful while OPEN)."""
        return max(self._probe_at - self._clock(), 0.0)

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        self._listeners.append(listener)

    # -- what the loop reports ----------------------------------------------------------------

    def succeeded(self, message_id: str) -> None:
        """A message was answered: the model works."""
        self._suspects.clear()
        self._failed_probes = 0
        if self._state is not State.CLOSED:
            # An answer that was in flight when the breaker opened: not enough to resume on;
            # the probe decides (a flapping server answers some and fails others).
            log.debug(
                "answered while the breaker is %s message_id=%s", self._state.value, message_id
            )

    def failed(self, message_id: str, exc: BaseException) -> Decision:
        """A message's responder raised `exc`: whose failure it is, and what becomes of it."""
        match blame(exc):
            case Blame.BUSY:
                return Decision.BUSY
            case Blame.MESSAGE:
                # The server answered about this request: it is up.
                self._suspects.clear()
                return Decision.SPEND
            case Blame.DEPENDENCY:
                self._suspects.clear()
                if self._state is State.CLOSED:
                    cause = getattr(exc, "cause", "") or "dependency"
                    self._open(cause, _describe(exc))
                return Decision.HAND_BACK
            case Blame.SUSPECT:
                if self._state is not State.CLOSED:
                    return Decision.HAND_BACK  # in flight when it opened: the model's too
                self._suspects[message_id] = _describe(exc)
                if len(self._suspects) < self.window:
                    return Decision.SPEND
                detail = (
                    f"{len(self._suspects)} different messages failed in a row, the last: "
                    f"{self._suspects[message_id]}"
                )
                self._suspects.clear()
                self._open(CAUSE_ERRORS, detail)
                return Decision.HAND_BACK

    def probe_started(self) -> None:
        """A probe begins (OPEN, or the start-up check): HALF_OPEN."""
        if self._state is State.OPEN:
            self._change(State.HALF_OPEN, CAUSE_PROBE, self._detail)

    def probe_succeeded(self) -> None:
        if self._state is State.CLOSED:
            return
        self._suspects.clear()
        self._change(State.CLOSED, CAUSE_PROBE, f"{self.url} answers")

    def probe_failed(self, exc: BaseException) -> None:
        """The probe failed: OPEN, the next probe after the backoff. An open's cause stays the
        one that opened it, unless the first check at start names a new one."""
        detail = _describe(exc)
        cause = getattr(exc, "cause", "") or CAUSE_PROBE
        if self._state is State.CLOSED:
            self._open(cause, detail)
            return
        if self._cause == CAUSE_START or isinstance(exc, DependencyDown):
            self._cause = cause
        self._detail = detail
        self._schedule_probe()
        self._change(State.OPEN, self._cause, detail)

    # -- inside -------------------------------------------------------------------------------

    def _open(self, cause: str, detail: str) -> None:
        self._cause = cause
        self._detail = detail
        self._schedule_probe()
        self._change(State.OPEN, cause, detail)

    def _schedule_probe(self) -> None:
        delay = max(self._backoff.delay(self._failed_probes, self._rand), MIN_PROBE_SECONDS)
        self._failed_probes += 1
        self._probe_at = self._clock() + delay

    def _change(self, state: State, cause: str, detail: str) -> None:
        previous, self._state = self._state, state
        if previous is state:
            return
        notable = state is State.CLOSED or (state is State.OPEN and not self._open_logged)
        change = Change(previous, state, cause, detail, self.url, notable)
        if state is State.OPEN and self._open_logged:
            # A failed probe leaves it open: said once, when it opened.
            log.debug("model server %s still down: %s", self.url, detail)
        elif state is State.OPEN:
            self._open_logged = True
            # A refused key or a missing model is the operator's to fix: an error.
            log.log(
                logging.ERROR if cause in CONFIG_CAUSES else logging.WARNING,
                "model server %s is down (%s: %s); taking no work, probing until it answers",
                self.url,
                cause,
                detail,
            )
        elif state is State.CLOSED:
            self._open_logged = False
            log.info("model server %s answers; taking work", self.url)
        else:
            log.debug("probing model server %s", self.url)
        for listener in self._listeners:
            listener(change)


Hook = Callable[[Change], Awaitable[None]]


async def _nothing(change: Change) -> None:
    return None


class ModelGuard:
    """Runs a Breaker in the event loop: the start-up check, the probes while it is open, and
    the bot's hooks, awaited in order, once per open and once per close.

    The bot's hooks (ackbot.bot.__main__): `on_open` pauses the consumer (its Consume session
    drained, unstarted deliveries handed back) and sets health NOT_SERVING; `on_close` resumes
    it and sets SERVING once its stream is up.
    """

    def __init__(
        self,
        breaker: Breaker,
        probe: Callable[[], Awaitable[None]] | None,
        *,
        on_open: Hook = _nothing,
        on_close: Hook = _nothing,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.breaker = breaker
        self._probe = probe
        self._on_open = on_open
        self._on_close = on_close
        self._sleep = sleep
        self._changes: asyncio.Queue[Change] = asyncio.Queue()
        self._wake = asyncio.Event()
        # Set while the breaker is closed (after the hooks of the close have run).
        self.closed = asyncio.Event()
        # Whether on_open ran last (None: neither hook has run yet).
        self._announced_open: bool | None = None
        breaker.add_listener(self._changed)

    def _changed(self, change: Change) -> None:
        if change.state is not State.HALF_OPEN:
            self._changes.put_nowait(change)
        self._wake.set()

    async def probe_once(self) -> bool:
        """One probe now (the start-up check, or one due while open); True when it answered."""
        self.breaker.probe_started()
        try:
            if self._probe is not None:
                await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the probe keeps the breaker open
            self.breaker.probe_failed(exc)
            return False
        self.breaker.probe_succeeded()
        return True

    async def run(self) -> None:
        """Until cancelled: the start-up check (unless done already), then the hooks of each
        change, and a probe whenever one is due."""
        if self.breaker.state is State.HALF_OPEN:
            await self.probe_once()
        while True:
            await self._deliver_changes()
            if self.breaker.state is State.OPEN:
                wait = self.breaker.probe_in()
                if wait > 0:
                    await self._wait(wait)
                    continue
                await self.probe_once()
            else:
                await self._wait(None)

    async def _deliver_changes(self) -> None:
        while not self._changes.empty():
            change = self._changes.get_nowait()
            if change.state is State.OPEN:
                if self._announced_open is not True:  # else a failed probe: still open
                    self._announced_open = True
                    self.closed.clear()
                    await self._on_open(change)
            elif self._announced_open is not False:
                self._announced_open = False
                await self._on_close(change)
                self.closed.set()

    async def _wait(self, seconds: float | None) -> None:
        """Sleeps `seconds` (None: until a change), waking early on a change."""
        self._wake.clear()
        if not self._changes.empty():
            return
        waiter = asyncio.ensure_future(self._wake.wait())
        tasks: set[asyncio.Future[Any]] = {waiter}
        if seconds is not None:
            tasks.add(asyncio.ensure_future(self._sleep(seconds)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def guard(self, responder: Responder) -> GuardedResponder:
        return GuardedResponder(responder, self.breaker)


class GuardedResponder:
    """A responder behind the breaker: while it is not closed, a message is handed back at once
    (DependencyDown, no model call); each answer and failure is reported to it; a failure it
    finds the model's becomes a DependencyDown, handed back without an attempt, to come back
    about when the next probe is due.

    Everything else (context_turns, aclose, probe, on_usage) is the wrapped responder's.
    """

    def __init__(self, inner: Responder, breaker: Breaker) -> None:
        self.inner = inner
        self._breaker = breaker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _down(self, detail: str) -> DependencyDown:
        breaker = self._breaker
        # At least a second: a message must not bounce between store and bot meanwhile.
        delay = max(breaker.probe_in(), 1.0)
        if breaker.url not in detail:
            detail = f"model server {breaker.url}: {detail}"
        return DependencyDown(detail, cause=breaker.cause, target=breaker.url, delay_seconds=delay)

    async def reply(self, message: IncomingMessage) -> str | None:
        breaker = self._breaker
        if not breaker.taking_work:
            raise self._down(f"not asked: {breaker.reason}")
        try:
            text = await self.inner.reply(message)
        except Exception as exc:
            if breaker.failed(message.id, exc) is Decision.HAND_BACK:
                raise self._down(_describe(exc)) from exc
            raise
        breaker.succeeded(message.id)
        return text
