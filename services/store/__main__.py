"""Entry point of `ackbot-store` (also `python -m ackbot.store`)."""

from __future__ import annotations

# First: gRPC core reads GRPC_VERBOSITY when grpc is first imported (see the module).
import ackbot.common.grpc_core_logs  # noqa: F401

# isort: split
import logging
import sys
from collections.abc import Sequence

from ackbot.common import eventloop
from ackbot.common.flags import missing_extra
from ackbot.common.logs import configure_logging
from ackbot.common.serving import InsecureListen
from ackbot.store.config import COMMAND, load_config
from ackbot.store.errors import DeclaredDead, StoreError

log = logging.getLogger("ackbot.store")

# The top-level modules of the `store` extra (pyproject.toml); uvloop is optional even there.
STORE_EXTRA_MODULES = ("sqlalchemy", "aiosqlite", "asyncpg", "alembic")


def main(argv: Sequence[str] | None = None) -> int:
    # First, before flags (--db is checked with SQLAlchemy): a client-only install has no
    # database drivers, and one line says what to install instead of an ImportError traceback.
    try:
        from ackbot.store.server import run
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, STORE_EXTRA_MODULES)
        if missing is None:
            raise
        if {"-h", "--help", "--version"} & set(sys.argv[1:] if argv is None else argv):
            load_config(argv)  # prints the help or the version and exits 0: no driver needed
        print(
            f"{COMMAND.prog}: error: {missing} is not installed: the store needs "
            "ackbot[store] (pip install 'ackbot[store]')",
            file=sys.stderr,
        )
        return 1
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["migrate"]:
        from ackbot.store.migrate import main as migrate

        configure_logging("WARNING")
        return migrate(args[1:])
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
