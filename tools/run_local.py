"""Starts a store, a bot and the web front door for local use; `make run` calls this.

The store starts first and the bot only once the store's health check says SERVING, so the bot's
first stream does not fail; the web front door (the comment widget) starts last, and the banner
names its URL. The children run in their own process groups: a Ctrl-C in the
terminal reaches only this script, which then stops the bot first (so it can hand back work and
finish its MarkProcessed calls while the store is still there) and the store second (the web
front door before both). When either
child dies on its own, the other is stopped too and this script exits 1.

A second Ctrl-C while stopping kills whatever is still running.

The children must never outlive this script, whatever ends it:
- a closed terminal (SIGHUP) stops them gracefully, like Ctrl-C;
- a broken output pipe (`make run | tee log`, then Ctrl-C, which ends tee first) costs only our
  own output: writes that fail are dropped, so the stop still reaches the children;
- if this script is killed outright, the kernel sends each child SIGTERM (Linux's
  PR_SET_PDEATHSIG, set in the child before it runs), and each child stops gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

STORE_SERVICE = "ackbot.v1.MessageStore"
DEFAULT_STORE_LISTEN = "127.0.0.1:50051"
POLL_SECONDS = 0.1
CHECK_TIMEOUT_SECONDS = 1.0
# Longer than each child's default --grace-seconds (bot 10 s, store 5 s), so a graceful stop is
# never cut short; past it the child is killed.
BOT_STOP_SECONDS = 15.0
WEB_STOP_SECONDS = 10.0
STORE_STOP_SECONDS = 10.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Signals:
    """Counts SIGINT/SIGTERM; the main loop and the stop helpers watch it."""

    def __init__(self) -> None:
        self.count = 0
        self.received = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.received.set()


def say(text: str, stream: TextIO) -> None:
    """Writes a line; a closed reader (the `tee` of `make run | tee log` ended by Ctrl-C)
    must not stop us from stopping the children, so a failed write is dropped."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=stream, flush=True)


def log(text: str) -> None:
    say(f"run_local: {text}", sys.stderr)


def _exit_with_parent(parent_pid: int) -> Callable[[], None]:
    """The child's pre-exec step: ask the kernel for SIGTERM when this script dies (Linux)."""
    libc_name = ctypes.util.find_library("c")
    prctl = getattr(ctypes.CDLL(libc_name, use_errno=True), "prctl", None) if libc_name else None

    def in_child() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the request took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", *args]
    # process_group=0: the terminal's Ctrl-C goes to this script alone, which decides the order.
    process = subprocess.Popen(command, process_group=0, preexec_fn=_exit_with_parent(os.getpid()))
    log(f"started {name} (pid {process.pid}): {shlex.join(command)}")
    return process


def wait_serving(
    name: str,
    address: str,
    service: str,
    process: subprocess.Popen[bytes],
    signals: Signals,
    timeout: float,
) -> bool:
    """Polls grpc.health.v1 Check until SERVING; False when the process exits, a signal
    arrives or `timeout` passes first (each of which is logged)."""
    deadline = time.monotonic() + timeout
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(address) as channel:
        # Any: typeshed's HealthStub declares no methods.
        health: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            if signals.received.is_set():
                return False
            if process.poll() is not None:
                log(f"{name} exited with code {process.returncode} before it was ready")
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log(f"{name} did not report SERVING on {address} within {timeout:g} s")
                return False
            try:
                response = health.Check(
                    request, timeout=min(CHECK_TIMEOUT_SECONDS, max(remaining, 0.01))
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass  # not listening yet, or not serving yet: poll again
            signals.received.wait(POLL_SECONDS)


def wait_web(
    address: str, process: subprocess.Popen[bytes], signals: Signals, timeout: float
) -> bool:
    """Polls the web front door's /healthz until it answers 200 (its store watch is open)."""
    deadline = time.monotonic() + timeout
    while True:
        if signals.received.is_set():
            return False
        if process.poll() is not None:
            log(f"web exited with code {process.returncode} before it was ready")
            return False
        if time.monotonic() >= deadline:
            log(f"web did not answer /healthz on {address} within {timeout:g} s")
            return False
        try:
            with urllib.request.urlopen(
                f"http://{address}/healthz", timeout=CHECK_TIMEOUT_SECONDS
            ) as response:
                if response.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass  # not listening yet, or not watching yet: poll again
        signals.received.wait(POLL_SECONDS)


def stop(
    name: str, process: subprocess.Popen[bytes] | None, signals: Signals, grace: float
) -> None:
    """SIGTERM, then wait up to `grace` seconds (or until another signal) before SIGKILL."""
    if process is None or process.poll() is not None:
        return
    log(f"stopping {name}")
    process.send_signal(signal.SIGTERM)
    signals_before = signals.count
    deadline = time.monotonic() + grace
    while process.poll() is None:
        if time.monotonic() >= deadline or signals.count > signals_before:
            log(f"killing {name}")
            process.kill()
            process.wait()
            return
        time.sleep(POLL_SECONDS / 2)
    log(f"{name} exited with code {process.returncode}")


def banner(store_listen: str, bot_listen: str, db: str | None, web_listen: str = "") -> str:
    bin_dir = Path(sys.executable).parent
    with contextlib.suppress(ValueError):  # outside the working directory: keep it absolute
        bin_dir = bin_dir.relative_to(Path.cwd())
    store_flag = "" if store_listen == DEFAULT_STORE_LISTEN else f" --store {store_listen}"
    grpcurl = bin_dir / "grpcurl"
    grpcurl_cmd = str(grpcurl) if grpcurl.exists() else "grpcurl"
    body = '{"message":{"author":"ana","text":"Hello"}}'
    lines = [
        "",
        f"ackbot is ready: store on {store_listen} ({db or 'the default SQLite database'}),"
        f" bot on {bot_listen}.",
    ]
    if web_listen:
        lines += [
            f"Open http://{web_listen}/ and write a comment: the bot's answer appears under it.",
        ]
    lines += [
        "Try, in another terminal:",
        f'  {bin_dir / "ackbot"}{store_flag} post "Hello" --wait 5',
        f"  {bin_dir / 'ackbot'}{store_flag} tail",
        f"  {grpcurl_cmd} -plaintext -d '{body}' {store_listen} {STORE_SERVICE}/CreateMessage",
        f"  {grpcurl_cmd} -plaintext {store_listen} describe {STORE_SERVICE}",
        "Ctrl-C stops them all.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store-listen", default=DEFAULT_STORE_LISTEN, metavar="HOST:PORT")
    parser.add_argument("--bot-listen", default="127.0.0.1:50052", metavar="HOST:PORT")
    parser.add_argument(
        "--web-listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="the web front door (the comment widget); empty: do not start it",
    )
    parser.add_argument(
        "--db", default=None, help="the store's --db URL (default: the store's, ./data/ackbot.db)"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each service may take to report SERVING",
    )
    args = parser.parse_args(argv)
    for flag in ("store_listen", "bot_listen", "web_listen"):
        # Port 0 would need the bound port from the child's log; local runs use fixed ports.
        if flag == "web_listen" and not args.web_listen:
            continue
        if getattr(args, flag).rpartition(":")[2] in ("", "0"):
            parser.error(f"--{flag.replace('_', '-')} needs HOST:PORT with a fixed port")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signals = Signals()
    signals.install()
    store_args = ["ackbot.store", "--listen", args.store_listen]
    if args.db:
        store_args += ["--db", args.db]

    store: subprocess.Popen[bytes] | None = None
    bot: subprocess.Popen[bytes] | None = None
    web: subprocess.Popen[bytes] | None = None
    try:
        store = start("store", store_args)
        if not wait_serving(
            "store", args.store_listen, STORE_SERVICE, store, signals, args.ready_timeout
        ):
            return 0 if signals.received.is_set() else 1
        bot = start(
            "bot", ["ackbot.bot", "--store", args.store_listen, "--listen", args.bot_listen]
        )
        # The bot reports SERVING once its stream to the store is connected.
        if not wait_serving("bot", args.bot_listen, "", bot, signals, args.ready_timeout):
            return 0 if signals.received.is_set() else 1
        if args.web_listen:
            web = start(
                "web", ["ackbot.web", "--store", args.store_listen, "--listen", args.web_listen]
            )
            if not wait_web(args.web_listen, web, signals, args.ready_timeout):
                return 0 if signals.received.is_set() else 1
        # The store takes ACKBOT_STORE_DB when --db is not given: the banner names that too.
        chosen_db = args.db or os.environ.get("ACKBOT_STORE_DB") or None
        say(banner(args.store_listen, args.bot_listen, chosen_db, args.web_listen), sys.stdout)
        children = [("store", store), ("bot", bot)] + ([("web", web)] if web else [])
        while not signals.received.is_set():
            for name, process in children:
                if process.poll() is not None:
                    log(f"{name} exited with code {process.returncode}; stopping the others")
                    return 1
            signals.received.wait(POLL_SECONDS * 2)
        log("shutdown requested")
        return 0
    finally:
        stop("web", web, signals, WEB_STOP_SECONDS)
        stop("bot", bot, signals, BOT_STOP_SECONDS)
        stop("store", store, signals, STORE_STOP_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
