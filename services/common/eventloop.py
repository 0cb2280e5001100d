"""Runs a service's main coroutine on uvloop when it is installed, else on asyncio's own loop.

Why uvloop: every database call is a round trip to aiosqlite's thread, and uvloop makes the way
back into the event loop cheaper; a lone write costs about a quarter less CPU with it (measured
in docs/performance.md). It is a dependency wherever it builds (not on Windows).
ACKBOT_EVENT_LOOP=asyncio picks the standard loop, so the two can be compared.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
EVENT_LOOP_ENV = "ACKBOT_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for `choice` (default: $ACKBOT_EVENT_LOOP, else "auto"); None means
    asyncio's own loop."""
    choice = (choice or os.environ.get(EVENT_LOOP_ENV) or "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"{EVENT_LOOP_ENV} must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
