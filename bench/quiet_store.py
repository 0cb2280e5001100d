"""The store with its notifications to other stores switched off: the baseline of what they cost.

    python -m bench.quiet_store [ackbot-store flags...]

Every transaction that makes work sends one NOTIFY (ackbot.store.database.Database.notify_work),
and a notifying commit takes a lock global to the PostgreSQL server. This launcher runs the same
store without it, so bench.cross_store can measure CreateMessage with and without.
"""

from __future__ import annotations

import sys

from sqlalchemy.engine import Connection

from ackbot.store.__main__ import main as store_main
from ackbot.store.database import Database


def launcher() -> list[str]:
    """The command that replaces `python -m ackbot.store` (store_service's `launcher`)."""
    return [sys.executable, "-m", "bench.quiet_store"]


def _say_nothing(self: Database, connection: Connection, store_id: str) -> None:
    del self, connection, store_id


def main() -> int:
    Database.notify_work = _say_nothing  # type: ignore[method-assign]
    return store_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
