"""`ackbot-store migrate`: the schema migrations as a step of their own, for deployments that
migrate before they roll out stores started with --no-migrate.

    ackbot-store migrate [--db URL] current           the revision the database is at, and head
    ackbot-store migrate [--db URL] upgrade [REV]     up to REV (default: head)
    ackbot-store migrate [--db URL] downgrade REV     down to REV ("base": no ackbot tables)

Each step runs in the schema-change transaction that stores starting at once take turns on, so
it never runs beside a store's own upgrade. A downgrade takes away what newer code counts on:
stop the stores of the newer release first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from ackbot.common.flags import version_line
from ackbot.store import migrations
from ackbot.store.config import DEFAULT_DB_URL, ENV_PREFIX, check_db_url
from ackbot.store.database import Database
from ackbot.store.errors import StoreError

PROG = "ackbot-store migrate"
DB_ENV = ENV_PREFIX + "DB"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Show, upgrade or downgrade the store's database schema (Alembic).",
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--db",
        default=env.get(DB_ENV) or DEFAULT_DB_URL,
        metavar="URL",
        help=f"the database URL, as the store's --db (env {DB_ENV}; default %(default)s)",
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    steps.add_parser("current", help="print the revision the database is at, and this ackbot's")
    upgrade = steps.add_parser("upgrade", help="upgrade to REVISION (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head", metavar="REVISION")
    downgrade = steps.add_parser("downgrade", help="downgrade to REVISION (base: no tables)")
    downgrade.add_argument("revision", metavar="REVISION")
    return parser


async def _run(args: argparse.Namespace) -> str:
    database = Database.from_url(args.db)
    try:
        await database.check_open()
        if args.step == "current":
            current = await migrations.current_revision(database)
            head = migrations.head_revision()
            state = "current" if current == head else f"this ackbot's is {head}"
            return f"revision {current or '(none: a new database)'} ({state})"
        if args.step == "upgrade":
            before, after = await migrations.upgrade(database, args.revision)
        else:
            before, after = await migrations.downgrade(database, args.revision)
        return f"{args.step}d from revision {before or '(none)'} to {after or '(none: base)'}"
    finally:
        await database.dispose()


def main(argv: Sequence[str]) -> int:
    """`argv` is what follows `migrate`; exit 0, 1 (the database failed) or 2 (usage)."""
    parser = build_parser(os.environ)
    args = parser.parse_args(argv)
    problem = check_db_url(args.db)
    if problem is not None:
        parser.error(problem)
    if args.step != "current":
        try:
            migrations.known_revision(args.revision)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        print(asyncio.run(_run(args)))
    except (StoreError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0
