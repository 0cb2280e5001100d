"""One store per SQLite file: an OS lock on `<file>.lock`, held for the store's whole life.

Why: a store on SQLite owns its file, so at start it hands out again every lease it finds there
(they belonged to streams of a store that is gone). A second store on the same file would take
the first one's live leases that way and deliver those messages twice. So a store takes this
lock before it touches the database, and a second one refuses to start, naming the store that
holds it.

How: flock(2) on a file beside the database, not on the database itself (SQLite's own POSIX
locks on that file are dropped when any descriptor of it closes). The kernel drops a flock when
its process ends however it ends, `kill -9` included, so a crashed store never blocks the next
one; the lock file stays behind, and only the lock counts, never the file's content. The holder
writes its pid and listen address into it, for the refusal to quote. flock works on local file
systems on Linux and macOS (and on NFS, where Linux maps it to a POSIX lock). There is no
`fcntl` on Windows, where the store does not run anyway (asyncio signal handlers).
An in-memory SQLite database belongs to its process alone and needs no lock; PostgreSQL is
shared by design.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy.engine import make_url

from ackbot.store.errors import StoreError

LOCK_SUFFIX = ".lock"


class DatabaseInUse(StoreError):
    """Another store holds the SQLite file; the message names the file and that store."""


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL opens, made absolute; None for any other database and for an
    in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database.startswith("file:"):
        # A URI filename (`...?uri=true`): its path part names the file, mode=memory none.
        uri = urlsplit(database)
        if "memory" in (parsed.query.get("mode"), dict(parse_qsl(uri.query)).get("mode")):
            return None
        database = unquote(uri.path)
    if not database or database == ":memory:":
        return None
    # resolve(): every path to the file (relative, through a symlink) finds the same lock.
    return Path(database).resolve()


class FileOwnership:
    """The held lock of one SQLite file; `release()` (or the process's end) lets it go."""

    def __init__(self, database_file: Path, descriptor: int) -> None:
        self.database_file = database_file
        self._descriptor: int | None = descriptor

    @classmethod
    def claim(cls, database_file: Path, listen: str) -> FileOwnership:
        """Takes the lock of `database_file` without waiting; raises DatabaseInUse when another
        store holds it, OSError when the lock file cannot be opened."""
        lock_path = database_file.with_name(database_file.name + LOCK_SUFFIX)
        # The folder, as the database itself would make it on a fresh checkout.
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 512, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise DatabaseInUse(
                f"{database_file} is in use by another store "
                f"({holder or 'one that is still starting'}); "
                "one store per SQLite file: stop that one or give this one another --db"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        ownership = cls(database_file, descriptor)
        ownership._describe(f"starting, --listen {listen}")
        return ownership

    def announce(self, address: str) -> None:
        """Records the address the store listens on, for a refused second store to name."""
        self._describe(f"listening on {address}")

    def _describe(self, what: str) -> None:
        if self._descriptor is None:
            return
        line = f"pid {os.getpid()}, {what}\n".encode()
        # Written over the old line, then cut to length: a reader never finds it empty.
        os.pwrite(self._descriptor, line, 0)
        os.ftruncate(self._descriptor, len(line))

    def release(self) -> None:
        """Lets the file go (closing the descriptor drops the lock); safe to call twice."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def claim_database(url: str, listen: str) -> FileOwnership | None:
    """The lock of the SQLite file `url` names, taken for this store; None when the database
    needs none (PostgreSQL, in-memory SQLite)."""
    database_file = sqlite_file(url)
    if database_file is None:
        return None
    return FileOwnership.claim(database_file, listen)
