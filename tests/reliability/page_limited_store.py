"""The real ackbot store, with SQLite's `max_page_count` applied to every connection it opens:
a database that cannot grow past a fixed size, as on a full disk.

Why a launcher: `max_page_count` belongs to a connection, not to the file, and the store opens
its own connections, so the limit has to be set where they are opened. A class-level SQLAlchemy
`connect` listener does that without touching the store's code; everything else is
`python -m ackbot.store` as shipped. Run as
`ACKBOT_TEST_SQLITE_MAX_PAGES=N python -m tests.reliability.page_limited_store STORE-FLAGS...`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ackbot.store.__main__ import main

MAX_PAGES_ENV = "ACKBOT_TEST_SQLITE_MAX_PAGES"


def limit_every_connection(max_pages: int) -> None:
    @event.listens_for(Engine, "connect")
    def apply_page_limit(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count={max_pages}")
        cursor.close()


if __name__ == "__main__":
    limit_every_connection(int(os.environ[MAX_PAGES_ENV]))
    sys.exit(main())
