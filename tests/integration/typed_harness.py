"""The part of harness.py that tools outside the tests rely on (bench/, chaos/), typed.

harness.py is test code without full annotations, and mypy checks every module it follows; the
benchmark and the chaos run import it by name (`load()`) and see it through these types, so
`mypy bench chaos` stays about those packages.
"""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol


class Service(Protocol):
    """One ackbot process (harness.Service)."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    async def astart(self) -> Service: ...

    async def akill(self) -> int: ...

    async def aterminate(self, within: float = ...) -> int: ...

    def cleanup(self) -> None: ...

    def log_text(self) -> str: ...

    def describe(self) -> str: ...


def load() -> Any:
    """tests.integration.harness, imported by name (see the module docstring)."""
    return importlib.import_module("tests.integration.harness")


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    within: float,
    interval: float = 0.1,
    what: str = "",
) -> object:
    """Polls `predicate` (plain or coroutine function) until truthy; TimeoutError after
    `within` seconds."""
    return await load().wait_until(predicate, within, interval=interval, what=what)
