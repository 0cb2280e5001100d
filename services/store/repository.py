"""Every transaction of the store, over the tables' SQL (tables/). Callers get plain
dataclasses back (types.py).

Writes go through group commit (group_commit.py): requests that arrive together share one
transaction, and the hot ones, CreateMessage and MarkProcessed, are written a run at a time with
one statement each. Each transaction is one synchronous function of its connection, run whole in
one hop to the driver (Database.run_in_transaction), so the tables' writes are plain functions.

Each transaction records what it changed in one `Changes` (types.py). The work it made is
announced to the other stores sharing the database just before it commits (Database.notify_work);
once it has committed, the record goes to whoever listens (`report_changes_to`: the manager),
on the event loop. Nothing else here tells anyone anything.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from ackbot.store.database import Database
from ackbot.store.driver_errors import CONFLICT_ERRORS
from ackbot.store.errors import MessageDeleted, NotFound, StoreError
from ackbot.store.group_commit import GroupCommitter
from ackbot.store.ids import new_message_id, new_store_id
from ackbot.store.models import State
from ackbot.store.tables import leases, messages
from ackbot.store.tables import removal as removal_table
from ackbot.store.tables.leases import Claim, Extension, LeasesTable, Release
from ackbot.store.tables.messages import Mark, MessagesTable
from ackbot.store.tables.removal import Removal
from ackbot.store.tables.stores import StoresTable
from ackbot.store.tables.transaction import MESSAGES, Transaction
from ackbot.store.types import (
    Changes,
    CreateResult,
    DeadStore,
    DeleteResult,
    Delivery,
    Lease,
    MarkResult,
    NewMessage,
    Reaped,
    ReleasedLease,
    Removed,
    StoredMessage,
)

log = logging.getLogger(__name__)

# Large enough to take a burst from every connected client, small enough that one transaction
# stays a few milliseconds long.
MAX_BATCH = 256
# Messages an erasure tombstones per transaction (with their replies). On SQLite a batch holds
# the one write lock, so every writer waits for it: a hundred keeps that wait near one group
# commit's. On PostgreSQL it holds only its own rows, and writers go on beside it: larger
# batches cost fewer round trips. (Measured under load, tests/integration/test_erase_author.py.)
ERASE_BATCH_SINGLE_WRITER = 100
ERASE_BATCH = 256
# Rows of batched creates in one transaction at most (GroupCommitter's max_rows): about two
# clients' batches (the Publisher sends 100), so that settlements never queue behind a
# transaction of a thousand inserts.
MAX_CREATE_ROWS = 200


@dataclasses.dataclass(eq=False)
class SlotCredit:
    """A MarkProcessed whose slot a claim may count on (claim on settle, manager.py): `freed`
    is set inside the transaction, on the driver's side, once the mark's write succeeded."""

    freed: bool = False


@dataclasses.dataclass(eq=False)
class SettleClaim:
    """A claim riding with settlements: it leases `room` plus one for each credit freed in its
    own transaction (marks run first in a transaction, claims last), so a mark that fails, or
    lands in a later transaction, frees no slot it does not have. `limit` is the number it
    asked for, once it ran."""

    room: int
    credits: list[SlotCredit] = dataclasses.field(default_factory=list)
    limit: int | None = None


class MessageRepository:
    def __init__(
        self,
        database: Database,
        *,
        max_attempts: int = 5,
        clock_ns: Callable[[], int] = time.time_ns,
        max_batch: int = MAX_BATCH,
        store_id: str | None = None,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._database = database
        # Recorded on every lease this store grants (messages.owner_store), so that the other
        # stores on a shared database can hand them back if it dies, and named in the
        # notifications its transactions send.
        self._store_id = store_id or new_store_id()
        self._now_ns = clock_ns
        self._on_changes: Callable[[Changes], None] | None = None
        # `on_commit`: the size of each committed write batch (metrics).
        self._writes = GroupCommitter(
            self.run_write,
            max_batch=max_batch,
            max_rows=MAX_CREATE_ROWS,
            conflict_errors=CONFLICT_ERRORS,
            on_commit=on_commit,
        )
        self._messages = MessagesTable(database)
        self._leases = LeasesTable(max_attempts=max_attempts, store_id=self._store_id)
        self._stores = StoresTable(store_id=self._store_id, leases=self._leases)
        self._insert_turn_ms = (
            max(1, round(database.lock_timeout_seconds * 1000))
            if database.inserts_take_turns
            else None
        )

    @property
    def database(self) -> Database:
        return self._database

    @property
    def max_attempts(self) -> int:
        return self._leases.max_attempts

    @property
    def store_id(self) -> str:
        """This store's id: recorded on its leases, and named in its notifications."""
        return self._store_id

    @property
    def shared(self) -> bool:
        """Whether other stores may write to this database (PostgreSQL), so that work and lease
        expiries this store did not make can appear in it (Database.single_owner)."""
        return not self._database.single_owner

    def report_changes_to(self, listener: Callable[[Changes], None] | None) -> None:
        """Hands `listener` the record of every write transaction once it has committed."""
        self._on_changes = listener

    async def dispose(self) -> None:
        await self._writes.close()
        await self._database.dispose()

    async def run_write(self, body: Callable[[Transaction], list[Any]]) -> list[Any]:
        """Runs `body` in one write transaction, in one hop to the driver: announces the work it
        made to the other stores before the commit, and reports its changes after. Group commit
        runs every batch here; a write that must not queue behind the others may call it too."""
        now_ns = self._now_ns()
        committed: list[Changes] = []  # the record, once the body ran whole

        def transaction(connection: Connection) -> list[Any]:
            tx = Transaction(connection, now_ns, self._insert_turn_ms)
            outcomes = body(tx)
            # Only reached when every write ran (an error rolls back and announces nothing);
            # delivered to the other stores at the commit that follows.
            if tx.changes.made_work:
                self._database.notify_work(connection, self._store_id)
            committed[:] = [tx.changes]
            return outcomes

        outcomes = await self._database.run_in_transaction(transaction)
        # Reported only now: the transaction has committed, and this is the event loop (the
        # body may have run on the driver's thread, where a watcher's wake-up must not be set).
        if self._on_changes is not None and committed:
            changes = committed[0]
            if changes.messages or changes.made_work or changes.removed:
                try:
                    self._on_changes(changes)
                except Exception:
                    # The writes committed: their callers must not hear otherwise.
                    log.exception("telling what a write changed failed")
        return outcomes

    # -- messages ---------------------------------------------------------------------------

    async def create_message(self, new: NewMessage) -> CreateResult:
        if not new.id:
            new = dataclasses.replace(new, id=new_message_id(self._now_ns()))
        return await self._writes.submit(self._messages.create_many, new, runs_first=True)

    async def create_messages(self, news: list[NewMessage]) -> list[CreateResult | StoreError]:
        """Creates `news` in one transaction (BatchCreateMessages); one outcome per item, in
        order, an item's refusal (ID_TAKEN) among them. A failure of the transaction itself
        raises, and then nothing was written."""
        news = [
            new if new.id else dataclasses.replace(new, id=new_message_id(self._now_ns()))
            for new in news
        ]
        # Submitted as one request, so a group commit never splits it over two transactions.
        return await self._writes.submit(
            self._messages.create_runs, news, runs_first=True, rows=max(len(news), 1)
        )

    async def get_message(self, message_id: str, *, tombstones: bool = False) -> StoredMessage:
        """The message; a tombstone is MessageDeleted unless `tombstones` (the watches)."""
        now = self._now_ns()
        message = await self._database.run_read(
            lambda connection: messages.get_message(connection, message_id, now)
        )
        if message is None:
            raise NotFound(message_id)
        if message.state is State.DELETED and not tombstones:
            raise MessageDeleted(message_id)
        return message

    async def list_messages(
        self,
        *,
        after_sequence: int = 0,
        before_sequence: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
        state: State | None = None,
        reply_to: str | None = None,
        conversation_id: str | None = None,
    ) -> list[StoredMessage]:
        now = self._now_ns()
        return await self._database.run_read(
            lambda connection: messages.list_messages(
                connection,
                now,
                after_sequence=after_sequence,
                before_sequence=before_sequence,
                newest_first=newest_first,
                limit=limit,
                state=state,
                reply_to=reply_to,
                conversation_id=conversation_id,
            )
        )

    async def mark_processed(
        self,
        message_id: str,
        reply: NewMessage | None,
        lease_token: str = "",
        *,
        context_sequence: int = 0,
        credit: SlotCredit | None = None,
    ) -> MarkResult:
        # The lease token is not checked: the first reply to commit wins, whoever holds the
        # lease, and every later one learns that the message was already processed.
        del lease_token
        return await self._writes.submit(
            self._mark_many,
            (Mark(message_id, reply, context_sequence), credit),
            runs_first=True,
        )

    def _mark_many(
        self, tx: Transaction, items: list[tuple[Mark, SlotCredit | None]]
    ) -> list[MarkResult | StoreError]:
        results = self._messages.mark_many(tx, [mark for mark, _ in items])
        for (_, credit), result in zip(items, results, strict=True):
            if credit is not None and not isinstance(result, StoreError):
                credit.freed = True
        return results

    async def requeue(self, message_id: str) -> StoredMessage:
        return await self._writes.submit_one(self._messages.requeue, message_id)

    async def approve(self, message_id: str) -> StoredMessage:
        return await self._writes.submit_one(self._messages.approve, message_id)

    async def delete(self, message_id: str) -> DeleteResult:
        return await self._writes.submit_one(self._messages.delete, message_id)

    async def next_visible_ns(self) -> int | None:
        """When the earliest message that is not deliverable yet becomes deliverable."""
        now = self._now_ns()
        return await self._database.run_read(
            lambda connection: messages.next_visible_ns(connection, now)
        )

    async def sample_states(self) -> tuple[dict[str, int], int | None]:
        """(messages by state, receive time of the oldest PENDING or None), for GetStats and
        the metrics' sampler (see tables/messages.py)."""
        now = self._now_ns()
        return await self._database.run_read(
            lambda connection: messages.sample_states(connection, now)
        )

    async def erase_batch(self, author: str, limit: int | None = None) -> list[StoredMessage]:
        """Tombstones up to `limit` messages of `author`, oldest first, and the replies to them
        (EraseAuthor's batch), in a transaction of its own, like remove_batch; returns the
        tombstones made (none: nothing of the author is left).

        Rows locked by another write (a claim, a mark) are waited for, not skipped, so an
        empty batch means the author is erased; those writes are short."""
        if limit is None:
            limit = ERASE_BATCH if self.shared else ERASE_BATCH_SINGLE_WRITER
        outcome = await self.run_write(
            lambda tx: [
                self._messages.tombstone_where(tx, MESSAGES.c.author == author, limit=limit)
            ]
        )
        tombstones: list[StoredMessage] = outcome[0]
        return tombstones

    async def remove_batch(self, removal: Removal) -> Removed:
        """Removes one batch of settled messages for good (tables/removal.py), in a transaction
        of its own: not group commit's, so that a batch never makes the creates and settles
        queued there wait for more than its own few milliseconds."""
        outcome = await self.run_write(lambda tx: [removal_table.remove_batch(tx, removal)])
        removed: Removed = outcome[0]
        return removed

    # -- leases -----------------------------------------------------------------------------

    async def claim(self, limit: int, lease_ns: int) -> list[Delivery]:
        """Leases up to `limit` deliverable messages, oldest first.

        Every claim counts an attempt. A message already delivered max_attempts times goes to
        DEAD here instead of out again, so a message that crashes every bot cannot loop.
        """
        # Claims run last in their transaction, so they see the messages created and released
        # in it: a create that shares a transaction with a claim is delivered at once.
        return await self._writes.submit_one(
            self._leases.claim, Claim(limit, lease_ns), runs_last=True
        )

    async def claim_after_settles(self, claim: SettleClaim, lease_ns: int) -> list[Delivery]:
        """`claim`: a claim whose limit counts the slots that the marks of its own transaction
        free (see SettleClaim)."""

        def run(tx: Transaction, item: SettleClaim) -> list[Delivery]:
            item.limit = item.room + sum(1 for credit in item.credits if credit.freed)
            if item.limit <= 0:
                return []
            return self._leases.claim(tx, Claim(item.limit, lease_ns))

        return await self._writes.submit_one(run, claim, runs_last=True)

    async def release(
        self, message_id: str, lease_token: str, *, reason: str, retry_after_ns: int
    ) -> StoredMessage:
        return await self._writes.submit_one(
            self._leases.release, Release(message_id, lease_token, reason, retry_after_ns)
        )

    async def extend_lease(self, message_id: str, lease_token: str, lease_ns: int) -> StoredMessage:
        return await self._writes.submit_one(
            self._leases.extend, Extension(message_id, lease_token, lease_ns)
        )

    async def release_leases(self, leases: Sequence[Lease]) -> list[ReleasedLease]:
        """Hands back the leases of a stream that ended; returns those that were still held,
        each PENDING again or DEAD.

        The attempts stay counted (the delivery happened; it may have crashed the bot).
        """
        if not leases:
            return []
        return await self._writes.submit_one(self._leases.release_leases, list(leases))

    async def release_all_leases(self) -> int:
        """Returns every lease to PENDING: for a store starting on a database only it uses."""
        return await self._database.run_in_transaction(leases.release_all_leases)

    # -- the store registry (a shared PostgreSQL database; registry.py drives it) -------------

    async def register_store(self, session: AsyncConnection, listen_address: str) -> None:
        """Registers this store, its heartbeat now, on `session`: the dedicated session whose
        backend the other stores check."""
        async with self._database.translate_errors(), session.begin():
            await self._stores.register_store(session, listen_address)

    async def heartbeat(self, session: AsyncConnection, *, new_session: bool = False) -> bool:
        """Tells the other stores this one is alive; False when its registration is gone (it
        was declared dead). After a reconnect (`new_session`), `session` is the one to check."""
        async with self._database.translate_errors(), session.begin():
            return await self._stores.heartbeat(session, new_session=new_session)

    async def find_dead_stores(self, dead_after_seconds: float) -> list[DeadStore]:
        """The other stores whose heartbeat is older than `dead_after_seconds`, or whose
        registered session is gone, and those that hold leases unregistered (a read:
        reap_dead_stores decides, under row locks)."""
        return await self._database.run_read(
            lambda connection: self._stores.find_dead_stores(connection, dead_after_seconds)
        )

    async def reap_dead_stores(self, dead_after_seconds: float) -> list[Reaped]:
        """Hands back the leases of every store that is dead (as find_dead_stores says, checked
        again here) and deletes its registration, in one transaction; and the leases of stores
        that are not registered.

        Never waits on a lock, so it cannot hold up the writes it shares a transaction with: a
        store another reaper is handling is skipped (SKIP LOCKED), and so is a lease another
        transaction holds; the store's registration then stays until a later reap finds none.

        A transaction of its own, not one of group commit's: the writes queued there may be
        waiting for the very store this reap is about to declare dead (registry.py).
        """
        outcome = await self.run_write(lambda tx: [self._stores.reap(tx, dead_after_seconds)])
        reaped: list[Reaped] = outcome[0]
        return reaped

    async def deregister_store(self) -> list[ReleasedLease]:
        """Hands back every lease this store still holds and deletes its registration: the
        last write of a store that stops (or was declared dead, whose row is gone already)."""
        return await self._writes.submit_one(self._stores.deregister, self._store_id)
