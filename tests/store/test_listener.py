"""WorkListener's own logic against a stand-in connection: which notifications wake, how a lost
session is noticed and replaced, the catch-up wake, the poll, and logging each transition once.
(The real LISTEN on PostgreSQL is in test_cross_store.py and tests/integration.)"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ackbot.common.backoff import Backoff
from ackbot.store.database import WORK_CHANNEL, Database, create_engine
from ackbot.store.listener import WorkListener
from ackbot.testing import wait_until

DEADLINE = 5.0
OURS = "our-store"
QUICK = Backoff(initial_seconds=0.001, cap_seconds=0.01)


class FakeConnection:
    """The part of asyncpg.Connection the listener uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.closed = False
        self.listening = True
        self.answers = True
        self._on_notification: Callable[..., None] | None = None
        self._on_terminated: list[Callable[[Any], None]] = []

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None:
        self._on_terminated.append(callback)

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        assert channel == WORK_CHANNEL
        self._on_notification = callback

    async def fetchval(self, _query: str, channel: str, **_options: Any) -> bool:
        assert channel == WORK_CHANNEL
        if not self.answers:
            raise TimeoutError("no answer")
        return self.listening

    def get_server_pid(self) -> int:
        return self.pid

    def is_closed(self) -> bool:
        return self.closed

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True

    def notify(self, payload: str) -> None:
        assert self._on_notification is not None
        self._on_notification(self, 4242, WORK_CHANNEL, payload)

    def kill(self) -> None:
        """What pg_terminate_backend looks like from the client."""
        self.closed = True
        for callback in self._on_terminated:
            callback(self)


class Harness:
    def __init__(self) -> None:
        self.work = 0
        self.connections: list[FakeConnection] = []
        # Each connect attempt takes the next outcome: an exception to raise, or None to succeed.
        self.outcomes: list[BaseException | None] = []

    def on_work(self) -> None:
        self.work += 1

    async def connect(self) -> FakeConnection:
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is not None:
                raise outcome
        connection = FakeConnection(pid=len(self.connections) + 1)
        self.connections.append(connection)
        return connection


@pytest.fixture
async def database(tmp_path) -> AsyncIterator[Database]:
    # Unused by the listener here (it is given `connect`); any database serves.
    database = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db"))
    yield database
    await database.dispose()


@pytest.fixture
async def make_listener(database) -> AsyncIterator[Callable[..., WorkListener]]:
    listeners: list[WorkListener] = []

    def make(harness: Harness, *, poll_seconds: float = 60.0) -> WorkListener:
        listener = WorkListener(
            database,
            OURS,
            harness.on_work,
            poll_seconds=poll_seconds,
            check_seconds=0.05,
            connect=harness.connect,
            backoff=QUICK,
        )
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        await listener.stop()


async def test_another_stores_notification_wakes_and_our_own_does_not(make_listener):
    harness = Harness()
    listener = make_listener(harness)
    await listener.start(first_listen_within=DEADLINE)
    assert listener.listening
    assert harness.work == 1  # the catch-up wake of the first LISTEN
    (connection,) = harness.connections

    connection.notify("another-store")
    connection.notify(OURS)

    assert harness.work == 2
    assert listener.notifications == 1


async def test_a_killed_session_is_replaced_and_each_transition_logged_once(make_listener, caplog):
    caplog.set_level(logging.DEBUG, logger="ackbot.store.listener")
    harness = Harness()
    listener = make_listener(harness)
    await listener.start(first_listen_within=DEADLINE)
    first = harness.connections[0]
    harness.outcomes = [OSError("refused"), OSError("refused"), OSError("refused")]

    first.kill()

    await wait_until(lambda: listener.connections == 2, DEADLINE, interval=0.01)
    assert listener.listening
    assert listener.backend_pid == 2
    assert harness.work == 2  # a catch-up wake after each LISTEN
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "stopped hearing other stores (the database closed the connection); reconnecting, and "
        "polling every 60s meanwhile"
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 2
    assert "listening for other stores' work again" in infos[1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG] == [
        "listener connection failed: refused"
    ] * 3


@pytest.mark.parametrize("fault", ["stops answering", "stops listening"])
async def test_a_session_that_fails_its_check_is_replaced(make_listener, caplog, fault):
    harness = Harness()
    listener = make_listener(harness)
    await listener.start(first_listen_within=DEADLINE)
    first = harness.connections[0]

    if fault == "stops answering":  # a half-open connection: no callback ever comes
        first.answers = False
        reason = "check failed: TimeoutError: no answer"
    else:
        first.listening = False
        reason = f"the session no longer listens on {WORK_CHANNEL}"

    await wait_until(lambda: listener.connections == 2, DEADLINE, interval=0.01)
    assert first.closed
    assert f"stopped hearing other stores ({reason})" in caplog.text


async def test_a_database_unreachable_at_start_is_retried_with_one_warning(make_listener, caplog):
    harness = Harness()
    harness.outcomes = [OSError("refused")] * 5
    listener = make_listener(harness)

    await listener.start(first_listen_within=0)

    await wait_until(lambda: listener.listening, DEADLINE, interval=0.01)
    assert caplog.text.count("cannot listen for other stores' work (refused)") == 1
    assert harness.work == 1


async def test_the_poll_wakes_whether_or_not_the_listener_is_up(make_listener):
    harness = Harness()
    harness.outcomes = [OSError("refused")] * 1_000_000  # never listens
    listener = make_listener(harness, poll_seconds=0.01)

    await listener.start(first_listen_within=0)

    await wait_until(lambda: harness.work >= 3, DEADLINE, interval=0.01)
    assert not listener.listening


async def test_stop_closes_the_session_and_is_safe_twice(make_listener):
    harness = Harness()
    listener = make_listener(harness)
    await listener.start(first_listen_within=DEADLINE)

    await listener.stop()
    await listener.stop()

    assert harness.connections[0].closed
    assert listener.backend_pid is None
