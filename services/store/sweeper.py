"""Retention: a background task that removes settled messages older than --retain-processed,
--retain-dead and --retain-deleted (docs/semantics.md, "Deleting, holding, forgetting").

Each round purges every retained state through the manager, as PurgeMessages does, a batch per
short transaction (tables/removal.py), so creates and settles never wait for more than one
batch. Several stores on one PostgreSQL database may each run a sweeper: their batches take
disjoint rows (SKIP LOCKED), so they share the work and nothing is removed twice. Rounds come
every --sweep-seconds; a round that fails (the database unreachable) is logged and the next
one tries again.

Stopping waits for the batch in flight to commit (never cancelled mid-transaction, though a
kill -9 there only loses that batch, whole), then ends the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from ackbot.store.errors import StoreError
from ackbot.store.manager import MessageManager

log = logging.getLogger(__name__)

WHY = "retention"


class RetentionSweeper:
    def __init__(
        self,
        manager: MessageManager,
        retain_seconds: Mapping[str, float],
        *,
        interval_seconds: float,
    ) -> None:
        self._manager = manager
        self._retain = dict(retain_seconds)
        self._interval = interval_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._retain and self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-retention-sweeper")

    async def sweep_once(self) -> dict[str, int]:
        """One round: every retained state, until nothing older is left; returns what it
        removed by state (the originals' state; replies included)."""
        removed: dict[str, int] = {}
        for state, seconds in self._retain.items():
            count = 0
            async for so_far in self._manager.purge(state, round(seconds * 1e9), why=WHY):
                count = so_far
                if self._stopping.is_set():
                    break
            removed[state] = count
            if count:
                log.info("retention removed %d %s messages (replies included)", count, state)
            if self._stopping.is_set():
                break
        return removed

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep_once()
            except StoreError as exc:  # the database is down: the next round tries again
                log.warning("retention sweep failed: %s", exc)
            except Exception:
                log.exception("retention sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)  # pacing

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
