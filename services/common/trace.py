"""An opt-in trace of each message's life, for `python -m bench.trace` (issue 22).

With ACKBOT_TRACE_DIR set, each process records (message id, step, CLOCK_MONOTONIC ns) at every
step it takes for a message and writes them to a file of its own in that folder: a chunk
whenever TRACE_CHUNK events have gathered, the rest when the process exits. CLOCK_MONOTONIC is
one clock for every process of the machine, so bench.trace can join the files by message id.

Unset (always, outside a benchmark), `ENABLED` is False and the call sites skip the call: the
hot path pays one global lookup and a branch per step.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

TRACE_DIR_ENV = "ACKBOT_TRACE_DIR"
# Events kept in memory before a chunk is appended to the file.
TRACE_CHUNK = 20_000

_folder = os.environ.get(TRACE_DIR_ENV, "")
ENABLED = bool(_folder)
_events: list[tuple[str, str, int]] = []
_monotonic_ns = time.monotonic_ns


def mark(step: str, message_id: str) -> None:
    """Records that `message_id` reached `step` now (call only when ENABLED)."""
    _events.append((message_id, step, _monotonic_ns()))
    if len(_events) >= TRACE_CHUNK:
        flush()


def mark_all(step: str, message_ids: Iterable[str]) -> None:
    now = _monotonic_ns()
    _events.extend((message_id, step, now) for message_id in message_ids)
    if len(_events) >= TRACE_CHUNK:
        flush()


def flush() -> None:
    if not _events:
        return
    script = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    # `python -m ackbot.store` runs .../store/__main__.py: the package names the process.
    name = script.parent.name if script.stem == "__main__" else script.stem
    path = Path(_folder) / f"{name}-{os.getpid()}.tsv"
    with path.open("a") as out:
        out.writelines(f"{m}\t{s}\t{t}\n" for m, s, t in _events)
    _events.clear()


if ENABLED:
    atexit.register(flush)
