"""The integration tests' process harness (tests/integration/harness.py), typed for the chaos run.

The chaos run starts, kills and waits on the real services exactly as the integration tests do,
so it reuses their harness instead of keeping a second copy. That module is test code without
full annotations, and mypy checks every module it follows; importing it by name keeps `mypy
chaos` about this package, and the Protocol below states the part of it the run relies on.
"""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, cast


class Service(Protocol):
    """One ackbot process (tests.integration.harness.Service)."""

    name: str
    address: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    async def astart(self) -> Service: ...

    async def akill(self) -> int: ...

    async def aterminate(self, within: float = ...) -> int: ...

    def cleanup(self) -> None: ...

    def log_text(self) -> str: ...

    def describe(self) -> str: ...


_harness: Any = importlib.import_module("tests.integration.harness")

RPC_TIMEOUT: float = _harness.RPC_TIMEOUT
PAGE_SIZE: int = _harness.PAGE_SIZE


def store_service(workdir: Path, *, db_path: Path, args: Iterable[str], name: str) -> Service:
    return cast(Service, _harness.store_service(workdir, db_path=db_path, args=args, name=name))


def bot_service(
    workdir: Path,
    store_address: str,
    *,
    persona: str,
    max_in_flight: int,
    lease_seconds: float,
    responder: str,
    args: Iterable[str],
) -> Service:
    return cast(
        Service,
        _harness.bot_service(
            workdir,
            store_address,
            persona=persona,
            max_in_flight=max_in_flight,
            lease_seconds=lease_seconds,
            responder=responder,
            args=args,
        ),
    )


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    within: float,
    interval: float = 0.1,
    what: str = "",
) -> object:
    """Polls `predicate` (plain or coroutine function) until truthy; TimeoutError after
    `within` seconds."""
    return await _harness.wait_until(predicate, within, interval=interval, what=what)
