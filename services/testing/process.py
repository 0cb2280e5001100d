"""Runs ackbot-store and ackbot-bot as real subprocesses, for tests, benchmarks and chaos runs.

A service writes stdout and stderr to a log file (a pipe nobody reads could fill up and block
it). Readiness is two conditions under one deadline: the `listening on HOST:PORT` line in that
log, then grpc.health.v1 SERVING. Waiting is always on a condition (`wait_until`), never a bare
sleep.

Starting and stopping are synchronous (a subprocess and the sync gRPC health stub), so module-
scoped pytest fixtures can use them without an event loop; async callers use the `a...`
variants, which run them in a thread so the caller's loop keeps serving its own calls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ackbot.common.limits import MAX_PAGE_SIZE
from ackbot.common.serving import client_credentials

# Every RPC a harness client makes carries this deadline, so a hung store fails the caller
# instead of hanging it.
RPC_TIMEOUT = 10.0
# The largest page a store returns: listing everything takes the fewest calls.
PAGE_SIZE = MAX_PAGE_SIZE
# The variable that sets the services' --log-level. DEBUG by default: tests and the chaos checks
# read the per-message lines; the benchmarks set INFO, the production default, so that they
# measure what a deployment runs.
SERVICE_LOG_LEVEL_ENV = "ACKBOT_SERVICE_LOG_LEVEL"
# How long a service may take from exec to health SERVING (imports on a slow 2-core CI box).
READY_TIMEOUT = 20.0
# SIGTERM to exit: the services' grace period here (5 s at most) plus slack.
STOP_TIMEOUT = 10.0

SERVING = health_pb2.HealthCheckResponse.SERVING
LISTENING = re.compile(r"listening on (\S+):(\d+)")
TRACEBACK = "Traceback (most recent call last)"
# The header of a log record below WARNING, as the services format it ("DATE TIME LEVEL name: ").
QUIET_RECORD = re.compile(r"\S+ \S+ (DEBUG|INFO) ")

T = TypeVar("T")


@dataclass(frozen=True)
class Security:
    """TLS files and tokens of a store under test, and what its clients need to reach it.

    The store serves with `cert` and `key`; with `client_ca` it wants client certificates (mutual
    TLS), and the harness's own clients (health probes) present `client_cert`/`client_key`.
    `tokens` maps a role name (producer, bot, admin) to its token; the store gets them by
    environment, a bot started with this Security sends the bot token."""

    ca: Path
    cert: Path
    key: Path
    client_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)

    def store_args(self) -> list[str]:
        args = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        if self.client_ca is not None:
            args += ["--tls-client-ca", str(self.client_ca)]
        return args

    def store_env(self) -> dict[str, str]:
        return {f"ACKBOT_STORE_{role.upper()}_TOKEN": token for role, token in self.tokens.items()}

    def credentials(self, target: str, token: str | None = None) -> grpc.ChannelCredentials:
        """TLS to the store (with the client certificate, if any), and `token` on every call."""
        credentials = client_credentials(
            target,
            ca=str(self.ca),
            cert=str(self.client_cert) if self.client_cert else None,
            key=str(self.client_key) if self.client_key else None,
            token=token,
        )
        assert credentials is not None  # a CA always makes TLS credentials
        return credentials


class ServiceError(AssertionError):
    """A service did not start or stop as it should; the message carries its log's tail."""


def sync_wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Polls `predicate` until it returns something truthy, which is returned; TimeoutError
    after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout:g} s: {what or predicate}")
        time.sleep(interval)


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]], within: float, interval: float = ..., what: str = ...
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T], within: float, interval: float = ..., what: str = ...
) -> T: ...


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
    """One process that logs `listening on HOST:PORT` and serves grpc.health.v1: started by
    `start()`, ready after `wait_ready()`."""

    #: every service started in this process, in order (pytest shows their logs on failure)
    registry: ClassVar[list[Service]] = []

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str],
        security: Security | None = None,
    ) -> None:
        self.name = name
        #: how to reach it when it serves TLS (None: plaintext)
        self.security = security
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.port = 0
        #: exit codes besides 0 that the test caused on purpose (see `problems`)
        self.expected_exits: set[int] = set()
        #: the test makes this service log a traceback on purpose
        self.traceback_expected = False
        self._killed = False
        self._stop_timed_out = False
        Service.registry.append(self)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
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

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Self:
        """Waits for the `listening on` line, then for health SERVING, under one deadline."""
        deadline = time.monotonic() + timeout

        def listening() -> re.Match[str] | None:
            self._fail_if_exited("exited before it was listening")
            return LISTENING.search(self.log_text())

        try:
            match = sync_wait_until(listening, timeout, what=f"{self.name} logs 'listening on'")
        except TimeoutError as exc:
            raise ServiceError(f"{exc}\n{self.describe()}") from None
        assert match is not None  # sync_wait_until returns only a truthy value
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
        self._fail_if_exited("exited while the caller waited for it")
        with self.sync_channel() as channel:
            # Any: typeshed's HealthStub declares no methods.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            except grpc.RpcError:
                return False
        return response.status == SERVING

    def sync_channel(self, token: str | None = None) -> grpc.Channel:
        """A sync channel to the service, with TLS when it serves TLS, and `token` if given."""
        if self.security is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.security.credentials(self.address, token))

    def aio_channel(self, token: str | None = None) -> grpc.aio.Channel:
        """`sync_channel` for grpc.aio; must be made inside the loop that uses it."""
        if self.security is None:
            if token is None:
                return grpc.aio.insecure_channel(self.address)
            loopback = client_credentials(self.address, token=token)
            assert loopback is not None
            return grpc.aio.secure_channel(self.address, loopback)
        return grpc.aio.secure_channel(self.address, self.security.credentials(self.address, token))

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `timeout`; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._stop_timed_out = True
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
                raise ServiceError(
                    f"{self.name} did not exit within {timeout:g} s of SIGTERM\n{self.describe()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL, like a crash or `kill -9`."""
        assert self.proc is not None
        self._killed = True
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(STOP_TIMEOUT)

    def cleanup(self) -> None:
        """Teardown: stops the process whatever happened, never raises."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ServiceError):
            self.terminate()

    def expect_exit(self, *codes: int) -> Self:
        """Says that the test makes this service exit with one of `codes` on purpose (a signal
        it sends itself is `-signal`); `kill()` says so by itself."""
        self.expected_exits.update(codes)
        return self

    def expect_traceback(self) -> Self:
        """Says that the test makes this service log a traceback on purpose."""
        self.traceback_expected = True
        return self

    def problems(self) -> list[str]:
        """What a test's teardown holds against this service, once it is stopped: an exit code
        other than 0 that nobody asked for (a crash after the test's last call would otherwise
        pass), a SIGTERM it did not obey, or a traceback in its log."""
        found = []
        code = self.proc.poll() if self.proc is not None else None
        if self._stop_timed_out:
            found.append("did not exit after SIGTERM (killed)")
        elif code not in (None, 0) and not self._killed and code not in self.expected_exits:
            found.append(f"exited with code {code}, which the test did not expect")
        lines = self.log_text().splitlines()
        for index, line in enumerate(lines):
            if self.traceback_expected or not line.startswith(TRACEBACK):
                continue
            # A library's DEBUG or INFO line may carry an exception it handled (grpc.aio logs a
            # request iterator cancelled at a stream's end so): not a failure.
            if index and QUIET_RECORD.match(lines[index - 1]):
                continue
            # The first one, which the log's tail may no longer show.
            found.append("logged a traceback:\n" + "\n".join(lines[index - 1 : index + 30]))
            break
        return found

    async def astart(self) -> Self:
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


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment: ours, minus any ACKBOT_* setting that could leak in, with our
    source folders on PYTHONPATH (`source_path`), then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACKBOT_")}
    env["PYTHONPATH"] = os.pathsep.join(source_path())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def source_path() -> list[str]:
    """The folders on our import path that a fresh interpreter would not have: the project root
    that pytest or `python -m` put there, and PYTHONPATH's. A child that gets them imports what
    its parent can: `--responder bench.responders:slow`, `-m tests.reliability.some_launcher`.
    Interpreter and virtualenv folders are left out; the child finds those by itself."""
    prefixes = (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)
    installed = {Path(prefix).resolve() for prefix in prefixes}
    folders: list[str] = []
    for entry in sys.path:
        folder = Path(entry or os.curdir).resolve()
        inside_installed = any(folder.is_relative_to(p) for p in installed)
        if folder.is_dir() and not inside_installed and str(folder) not in folders:
            folders.append(str(folder))
    return folders


def store_service(
    workdir: Path,
    *,
    db_path: Path | None = None,
    args: Iterable[str] = (),
    name: str = "store",
    launcher: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    security: Security | None = None,
) -> Service:
    """A store on a free loopback port and a SQLite file (`db_path`, default NAME.db in
    `workdir`, where its log goes too). `launcher` replaces `python -m ackbot.store` for a
    wrapped store (a profiler, a fault injector) that takes the same flags; `env` is added to
    `child_env()`. With `security` it serves TLS and knows the tokens (see Security)."""
    db_path = db_path or workdir / f"{name}.db"
    argv = [
        *(launcher or [sys.executable, "-m", "ackbot.store"]),
        "--listen",
        "127.0.0.1:0",
        "--db",
        f"sqlite+aiosqlite:///{db_path}",
        "--log-level",
        os.environ.get(SERVICE_LOG_LEVEL_ENV, "DEBUG"),
        "--grace-seconds",
        "5",
        *(security.store_args() if security is not None else ()),
        *args,
    ]
    extra = {**(security.store_env() if security is not None else {}), **(env or {})}
    return Service(name, argv, workdir / f"{name}.log", child_env(extra), security)


def bot_service(
    workdir: Path,
    store_address: str | Sequence[str],
    *,
    persona: str = "bot",
    max_in_flight: int = 8,
    lease_seconds: float = 30,
    responder: str | None = None,
    env: Mapping[str, str] | None = None,
    args: Iterable[str] = (),
    store_security: Security | None = None,
) -> Service:
    """A bot named bot-PERSONA on a free loopback port, streaming from `store_address` (or from
    one of several stores of one database, in failover order), with a short grace period and
    retry base; `args` come last, so they override any flag here. With `store_security` it
    reaches the stores by TLS (presenting the client certificate, if any) with the bot token."""
    name = f"bot-{persona}"
    stores = store_address if isinstance(store_address, str) else ",".join(store_address)
    argv = [
        sys.executable,
        "-m",
        "ackbot.bot",
        "--store",
        stores,
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
        os.environ.get(SERVICE_LOG_LEVEL_ENV, "DEBUG"),
    ]
    if responder is not None:
        argv += ["--responder", responder]
    extra: dict[str, str] = {}
    if store_security is not None:
        argv += ["--store-ca", str(store_security.ca)]
        if store_security.client_cert is not None and store_security.client_key is not None:
            argv += ["--store-cert", str(store_security.client_cert)]
            argv += ["--store-key", str(store_security.client_key)]
        if "bot" in store_security.tokens:
            extra["ACKBOT_BOT_TOKEN"] = store_security.tokens["bot"]
    argv += list(args)
    return Service(name, argv, workdir / f"{name}.log", child_env({**extra, **(env or {})}))
