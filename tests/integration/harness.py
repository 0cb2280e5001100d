"""Runs ackbot-store and ackbot-bot as real subprocesses, and the helpers the tests share.

A service writes stdout and stderr to a log file (a pipe nobody reads could fill up and block
it). Readiness is two conditions under one deadline: the `listening on HOST:PORT` line in that
log, then grpc.health.v1 SERVING. Waiting is always on a condition (`wait_until`), never a bare
sleep.

Starting and stopping are synchronous (a subprocess and the sync gRPC health stub), so module-
scoped fixtures can use them without an event loop; async tests call the `a...` variants, which
run them in a thread so the test's loop keeps serving its own calls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ackbot.v1 import message_store_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
GRPCURL = BIN_DIR / "grpcurl"

# Every RPC a test makes carries this deadline, so a hung store fails the test instead of
# hanging it until pytest-timeout.
RPC_TIMEOUT = 10.0
# How long a service may take from exec to health SERVING (imports on a slow 2-core CI box).
READY_TIMEOUT = 20.0
# SIGTERM to exit: the services' grace period in these tests (5 s at most) plus slack.
STOP_TIMEOUT = 10.0
PAGE_SIZE = 1000

SERVING = health_pb2.HealthCheckResponse.SERVING
STORE_SERVICE = "ackbot.v1.MessageStore"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
UNSETTLED_STATES = (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED)

_ids = itertools.count(1)


class ServiceError(AssertionError):
    """A service did not start or stop as it should; the message carries its log's tail."""


def sync_wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ""
) -> object:
    """Polls `predicate` until it returns something truthy, which is returned; fails after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout:g} s: {what or predicate}")
        time.sleep(interval)


async def wait_until(
    predicate: Callable[[], object], within: float, interval: float = 0.1, what: str = ""
) -> object:
    """Async `sync_wait_until` (`within` is its timeout, in seconds); `predicate` may be a
    coroutine function."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {within:g} s: {what or predicate}")
        await asyncio.sleep(interval)


class Service:
    """One ackbot process: started by `start()`, ready after `wait_ready()`."""

    #: every service any test started, in order (conftest shows their logs on failure)
    registry: list[Service] = []  # noqa: RUF012

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.port = 0
        Service.registry.append(self)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log_path.parent,
            )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Service:
        """Waits for the `listening on` line, then for health SERVING, under one deadline."""
        deadline = time.monotonic() + timeout

        def listening() -> re.Match[str] | None:
            self._fail_if_exited("exited before it was listening")
            return LISTENING.search(self.log_text())

        try:
            match = sync_wait_until(listening, timeout, what=f"{self.name} logs 'listening on'")
        except TimeoutError as exc:
            raise ServiceError(f"{exc}\n{self.describe()}") from None
        assert isinstance(match, re.Match)
        self.port = int(match.group(2))
        self.address = f"127.0.0.1:{self.port}"
        try:
            sync_wait_until(
                self.is_serving,
                max(deadline - time.monotonic(), 0.5),
                what=f"{self.name} health SERVING on {self.address}",
            )
        except TimeoutError as exc:
            raise ServiceError(f"{exc}\n{self.describe()}") from None
        return self

    def is_serving(self, service: str = "") -> bool:
        self._fail_if_exited("exited while the test waited for it")
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            except grpc.RpcError:
                return False
        return response.status == SERVING

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `timeout`; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
                raise ServiceError(
                    f"{self.name} did not exit within {timeout:g} s of SIGTERM\n{self.describe()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL, like a crash or `kill -9`."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(STOP_TIMEOUT)

    def cleanup(self) -> None:
        """Teardown: stops the process whatever happened, never raises."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ServiceError):
            self.terminate()

    async def astart(self) -> Service:
        self.start()
        return await asyncio.to_thread(self.wait_ready)

    async def aterminate(self, within: float = STOP_TIMEOUT) -> int:
        return await asyncio.to_thread(self.terminate, within)

    async def akill(self) -> int:
        return await asyncio.to_thread(self.kill)

    async def aserving(self, service: str = "") -> bool:
        return await asyncio.to_thread(self.is_serving, service)

    # -- logs ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        code = self.proc.poll() if self.proc else None
        state = "running" if code is None else f"exit code {code}"
        return (
            f"--- {self.name} ({state}; {' '.join(self.argv)}) log tail {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def _fail_if_exited(self, what: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ServiceError(f"{self.name} {what}\n{self.describe()}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The services' environment: ours, minus any ACKBOT_* setting that could leak in, plus the
    repository root on PYTHONPATH (for tests.support.responders)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACKBOT_")}
    paths = [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH", "")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def store_service(
    workdir: Path, *, db_path: Path | None = None, args: Iterable[str] = (), name: str = "store"
) -> Service:
    db_path = db_path or workdir / f"{name}.db"
    argv = [
        sys.executable,
        "-m",
        "ackbot.store",
        "--listen",
        "127.0.0.1:0",
        "--db",
        f"sqlite+aiosqlite:///{db_path}",
        "--log-level",
        "INFO",
        "--grace-seconds",
        "5",
        *args,
    ]
    return Service(name, argv, workdir / f"{name}.log", child_env())


def bot_service(
    workdir: Path,
    store_address: str,
    *,
    persona: str = "bot",
    max_in_flight: int = 8,
    lease_seconds: float = 30,
    responder: str | None = None,
    env: dict[str, str] | None = None,
    args: Iterable[str] = (),
) -> Service:
    name = f"bot-{persona}"
    argv = [
        sys.executable,
        "-m",
        "ackbot.bot",
        "--store",
        store_address,
        "--listen",
        "127.0.0.1:0",
        "--persona",
        persona,
        "--consumer",
        name,
        "--max-in-flight",
        str(max_in_flight),
        "--lease-seconds",
        f"{lease_seconds:g}",
        "--grace-seconds",
        "2",
        "--retry-base-seconds",
        "0.05",
        "--log-level",
        "INFO",
    ]
    if responder is not None:
        argv += ["--responder", responder]
    argv += list(args)
    return Service(name, argv, workdir / f"{name}.log", child_env(env))


def responder(name: str) -> str:
    """The --responder value of a test double in ackbot.testing.responders."""
    return f"ackbot.testing.responders:{name}"


# -- RPC helpers --------------------------------------------------------------------------------


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def unique_id(prefix: str = "m") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


async def create(stub, text: str, *, id: str = "", author: str = "tester", create_time=None):
    message = pb.Message(id=id, author=author, text=text)
    if create_time is not None:
        message.create_time.CopyFrom(create_time)
    response = await stub.CreateMessage(
        pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT
    )
    return response.message


async def create_many(stub, count: int, *, clients: int = 10, prefix: str = "msg") -> list[str]:
    """Creates `count` messages from `clients` concurrent tasks; returns their ids."""
    ids = [f"{prefix}-{i:05d}" for i in range(count)]

    async def client(number: int) -> None:
        for message_id in ids[number::clients]:
            await create(stub, f"hello number {message_id}", id=message_id, author=f"c{number}")

    await asyncio.gather(*(client(n) for n in range(clients)))
    return ids


async def get(stub, message_id: str):
    response = await stub.GetMessage(pb.GetMessageRequest(id=message_id), timeout=RPC_TIMEOUT)
    return response.message


async def list_all(stub, *, state=pb.MESSAGE_STATE_UNSPECIFIED, reply_to: str = ""):
    """Every matching message, following page tokens."""
    messages, token = [], ""
    while True:
        response = await stub.ListMessages(
            pb.ListMessagesRequest(
                page_size=PAGE_SIZE, page_token=token, state=state, reply_to=reply_to
            ),
            timeout=RPC_TIMEOUT,
        )
        messages.extend(response.messages)
        token = response.next_page_token
        if not token:
            return messages


async def count_state(stub, state) -> int:
    return len(await list_all(stub, state=state))


async def wait_settled(stub, expected_processed: int, within: float) -> None:
    """Waits until no message is PENDING or LEASED and `expected_processed` messages (originals
    and replies together) are PROCESSED."""

    async def settled() -> bool:
        for state in UNSETTLED_STATES:
            if await count_state(stub, state):
                return False
        return await count_state(stub, pb.MESSAGE_STATE_PROCESSED) >= expected_processed

    await wait_until(settled, within, interval=0.25, what="every message settled")


async def wait_state(stub, message_id: str, state, within: float):
    async def reached():
        message = await get(stub, message_id)
        return message if message.state == state else None

    return await wait_until(reached, within, what=f"{message_id} is {pb.MessageState.Name(state)}")


def check_answered_once(messages, original_ids: Iterable[str], personas: Iterable[str] = ()):
    """Asserts the contract on a full listing: each original PROCESSED with exactly one reply,
    named by its reply_id; replies born PROCESSED, never delivered, never answered; no reply
    answers a reply. Returns {original id: reply}."""
    by_id = {m.id: m for m in messages}
    replies: dict[str, list] = {}
    for message in messages:
        if message.reply_to:
            replies.setdefault(message.reply_to, []).append(message)
    problems = []
    originals = list(original_ids)
    for original_id in originals:
        original = by_id.get(original_id)
        if original is None:
            problems.append(f"{original_id}: missing")
            continue
        answers = replies.get(original_id, [])
        if original.state != pb.MESSAGE_STATE_PROCESSED:
            problems.append(f"{original_id}: {pb.MessageState.Name(original.state)}")
        if len(answers) != 1:
            problems.append(f"{original_id}: {len(answers)} replies")
        elif original.reply_id != answers[0].id:
            problems.append(f"{original_id}: reply_id {original.reply_id!r} != {answers[0].id}")
    for reply_to, answers in replies.items():
        if reply_to in by_id and by_id[reply_to].reply_to:
            problems.append(f"a reply answers the reply {reply_to}")
        for reply in answers:
            if reply.state != pb.MESSAGE_STATE_PROCESSED:
                problems.append(f"reply {reply.id}: {pb.MessageState.Name(reply.state)}")
            if reply.delivery_attempts != 0:
                problems.append(f"reply {reply.id} was delivered {reply.delivery_attempts}x")
            if reply.reply_id:
                problems.append(f"reply {reply.id} has a reply {reply.reply_id}")
    personas = set(personas)
    if personas:
        authors = {r.author for answers in replies.values() for r in answers}
        if not authors <= personas:
            problems.append(f"reply authors {sorted(authors - personas)} are no bot's persona")
    assert not problems, f"{len(problems)} problems, first 20: {problems[:20]}"
    return {original_id: replies[original_id][0] for original_id in originals}


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest in an error's status details."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no grpc-status-details-bin in {error}"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(v.field for v in bad_request.field_violations)
    return fields


class StreamReader:
    """Reads a StreamUnprocessed call in a task and queues its deliveries.

    Cancelling a pending grpc.aio `read()` cancels the whole call, so a test that wants to see
    that nothing arrives must not time out a read: it times out `next()` on this queue instead.
    """

    def __init__(
        self, stub, *, consumer: str, max_in_flight: int = 0, lease_seconds=None, queue=None
    ):
        request = pb.StreamUnprocessedRequest(consumer=consumer, max_in_flight=max_in_flight)
        if lease_seconds is not None:
            request.lease_duration.CopyFrom(seconds(lease_seconds))
        self.call = stub.StreamUnprocessed(request, timeout=120)
        # Several readers may share one queue, to wait for a delivery on any of them.
        self.queue: asyncio.Queue = asyncio.Queue() if queue is None else queue
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for response in self.call:
                for delivery in response.deliveries:
                    self.queue.put_nowait(delivery)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    async def wait_open(self) -> None:
        """Waits for the response headers: the store has registered the stream."""
        await asyncio.wait_for(self.call.initial_metadata(), RPC_TIMEOUT)

    async def next(self, within: float = RPC_TIMEOUT):
        try:
            return await asyncio.wait_for(self.queue.get(), within)
        except TimeoutError:
            raise TimeoutError(
                f"no delivery within {within:g} s (stream error: {self.error})"
            ) from None

    async def take(self, count: int, within: float = RPC_TIMEOUT) -> list:
        return [await self.next(within) for _ in range(count)]

    async def expect_nothing(self, window: float) -> None:
        """Asserts that no delivery arrives within `window` seconds."""
        try:
            delivery = await asyncio.wait_for(self.queue.get(), window)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected delivery of {delivery.message.id}")

    async def close(self) -> None:
        self.call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
