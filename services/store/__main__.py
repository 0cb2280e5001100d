"""Entry point of `ackbot-store` (also `python -m ackbot.store`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ackbot.common import eventloop
from ackbot.common.logs import configure_logging
from ackbot.common.serving import InsecureListen
from ackbot.store.config import load_config
from ackbot.store.errors import DeclaredDead, StoreError
from ackbot.store.server import run

log = logging.getLogger("ackbot.store")


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    configure_logging(config.log_level, config.log_format)
    # Alembic narrates each step at INFO; ackbot.store.migrations logs what changed in one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        eventloop.run(run(config))
    except DeclaredDead:
        return 1  # the registry logged why, when it found out
    except (StoreError, OSError, InsecureListen) as exc:
        log.error("store failed to start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
