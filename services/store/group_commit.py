"""Group commit: writes that arrive together share one transaction, and so one durable flush.

Why: with one transaction per call the store spends its time on the flush (an fsync on SQLite,
a WAL flush on PostgreSQL) and on a dozen round trips to the driver's thread per transaction,
not on the SQL itself. One writer task instead takes every request that queued while the
previous transaction was committing and runs them all in the next one, the way PostgreSQL's WAL
writer and Kafka's producer batch. A request that finds the writer idle starts a transaction at
once: nothing ever waits for company.

A caller is answered only after the transaction holding its write has committed, so an
acknowledged write is exactly as durable as with one transaction per call.

A transaction is one hop to the database driver: the writer hands the whole batch, as one
synchronous function, to `run` (Database.run_in_transaction), which runs it on the driver's side
(SQLite's writer thread, PostgreSQL's greenlet) and commits. So the handlers below are plain
functions of the open transaction, never coroutines, and must not touch the event loop.

A write is submitted with the function that performs it. `submit` takes a batch handler: all the
requests of one transaction for it reach it together, so it can write them with one statement.
`submit_one` takes a per-item function, called once for each of its requests in the shared
transaction. Requests in one transaction were all waiting at the same time, none answered yet,
so any order is a valid one: functions run in the order they first appear, except that requests
submitted with `runs_first=True` run before all the others (the store's inserts, so that a
transaction takes PostgreSQL's insert lock before any row lock) and those with `runs_last=True`
after all the others (the store's claims, so that they see the messages created and released in
the same transaction). Each function gets its own requests in arrival order. A function
answers each request with a result or a StoreError; it must write nothing for a request it
answers with an error, because the others in the transaction still commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ackbot.store.errors import ShuttingDown, StoreError

log = logging.getLogger(__name__)

Tx = TypeVar("Tx")
Item = TypeVar("Item")
Result = TypeVar("Result")

# Takes the open transaction and a run of requests; returns one outcome per request, in order.
BatchHandler = Callable[[Tx, list[Item]], list[Result | StoreError]]
# Takes the open transaction and one request; returns its outcome.
ItemHandler = Callable[[Tx, Item], Result | StoreError]
# Runs a function of the open transaction in one transaction, committed if it returns.
RunTransaction = Callable[[Callable[[Tx], list[Any]]], Awaitable[list[Any]]]


@dataclass(frozen=True)
class _Kind:
    """What a request is run by; the requests of one kind in a transaction run together."""

    handler: Callable[..., Any]
    per_item: bool
    runs_first: bool
    runs_last: bool

    @property
    def phase(self) -> int:
        return 0 if self.runs_first else 2 if self.runs_last else 1


@dataclass(eq=False)
class _Request:
    kind: _Kind
    item: Any
    future: asyncio.Future[Any]
    # Rows it writes (a BatchCreateMessages' run of creates is many): see `max_rows`.
    rows: int = 1


class GroupCommitter(Generic[Tx]):
    """Runs submitted writes in shared transactions, each run whole by `run`.

    `conflict_errors` are the errors one request can cause for the whole transaction (a unique
    constraint another process won): a batch failing with one is run again one request per
    transaction, so only the request that caused it sees it.

    `max_rows` bounds the rows of the large requests (submitted with `rows` > 1: a client's
    batch of creates) in one transaction. Once one is left for the next transaction, only
    small requests that run first (a settlement's write) are taken past it: nothing in a
    transaction depends on those, whereas a claim must see every create queued before it (a
    claim riding with a create decides from what it finds whether anyone must look again).
    Why (issue 22's trace): under a stream of batched creates a transaction could hold a
    thousand inserts, and every settlement queued behind it waited for that one and then for
    the next as large; a bot's slot is held until its settlement commits, so the window of
    deliveries turned over that much slower.
    """

    def __init__(
        self,
        run: RunTransaction[Tx],
        *,
        max_batch: int,
        max_rows: int | None = None,
        conflict_errors: tuple[type[BaseException], ...] = (),
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._run_transaction = run
        # Told the size of each batch that committed (the store's batch-size histogram).
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._max_rows = max_rows
        self._conflict_errors = conflict_errors
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(
        self,
        handler: BatchHandler[Tx, Item, Result],
        item: Item,
        *,
        runs_first: bool = False,
        runs_last: bool = False,
        rows: int = 1,
    ) -> Result:
        """Writes `item` with `handler`, together with the transaction's other items for it;
        `rows` is how many rows it writes (see `max_rows`)."""
        kind = _Kind(handler, per_item=False, runs_first=runs_first, runs_last=runs_last)
        return await self._enqueue(kind, item, rows)

    async def submit_one(
        self,
        handler: ItemHandler[Tx, Item, Result],
        item: Item,
        *,
        runs_first: bool = False,
        runs_last: bool = False,
    ) -> Result:
        """Writes `item` with `handler(tx, item)`, inside a shared transaction."""
        kind = _Kind(handler, per_item=True, runs_first=runs_first, runs_last=runs_last)
        return await self._enqueue(kind, item)

    async def _enqueue(self, kind: _Kind, item: Any, rows: int = 1) -> Any:
        if kind.runs_first and kind.runs_last:
            raise ValueError("a write runs first or last, not both")
        if self._closed:
            raise ShuttingDown()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(kind, item, future, rows))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="group-commit-writer")
        # A cancelled caller (its RPC was cancelled) leaves the write to run or be skipped;
        # either is a valid outcome of a cancelled call.
        return await future

    async def close(self) -> None:
        """Refuses new writes and waits until the queued ones have committed."""
        self._closed = True
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._commit(batch)
        finally:
            self._writer = None

    def _take(self) -> list[_Request]:
        """The next transaction's requests, in queue order: up to max_batch, the large ones
        up to max_rows (at least one), and past a large one left queued only the small ones
        that run first; cancelled ones dropped."""
        if self._max_rows is None:
            taken, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            return [r for r in taken if not r.future.done()]
        batch: list[_Request] = []
        left: list[_Request] = []
        rows = 0
        for index, request in enumerate(self._queue):
            if len(batch) >= self._max_batch:
                left.extend(self._queue[index:])
                break
            if request.future.done():
                continue
            if left and (request.rows > 1 or not request.kind.runs_first):
                left.append(request)  # stays behind the large request left queued
                continue
            if request.rows > 1:
                if rows and rows + request.rows > self._max_rows:
                    left.append(request)
                    continue
                rows += request.rows
            batch.append(request)
        self._queue = left
        return batch

    async def _commit(self, batch: Sequence[_Request]) -> None:
        try:
            outcomes = await self._run(batch)
        except self._conflict_errors as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.info("a batch of %d writes hit a conflict; running them one by one", len(batch))
            for request in batch:
                await self._commit([request])
            return
        except asyncio.CancelledError:
            _fail(batch, ShuttingDown())
            raise
        except Exception as exc:
            # Nothing of the batch committed; every caller learns why (StorageUnavailable and
            # StorageFull are retryable, anything else is reported as internal).
            _fail(batch, exc)
            return
        if self._on_commit is not None:
            self._on_commit(len(batch))
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    async def _run(self, batch: Sequence[_Request]) -> list[Any]:
        """Runs the batch in one transaction; returns the outcomes in the batch's order."""
        groups: dict[_Kind, list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault(request.kind, []).append(index)
        # A stable sort: the first-seen order holds within each of the three runs.
        order = sorted(groups, key=lambda kind: kind.phase)
        runs = [(kind, groups[kind], [batch[i].item for i in groups[kind]]) for kind in order]
        size = len(batch)

        def transaction(tx: Tx) -> list[Any]:
            outcomes: list[Any] = [None] * size
            for kind, indexes, items in runs:
                if kind.per_item:
                    results = [kind.handler(tx, item) for item in items]
                else:
                    results = kind.handler(tx, items)
                    if len(results) != len(indexes):
                        raise RuntimeError(
                            f"{kind.handler} answered {len(results)} of {len(indexes)}"
                        )
                for index, result in zip(indexes, results, strict=True):
                    outcomes[index] = result
            return outcomes

        return await self._run_transaction(transaction)


def _fail(batch: Sequence[_Request], error: BaseException) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(error)
