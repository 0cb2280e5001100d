"""Store settings: one frozen dataclass, read once from flags and environment in the entry point."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ackbot.common.flags import MAX_WAIT_SECONDS, EnvFlags, address, int_in, seconds_in
from ackbot.common.limits import MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, Limits

DEFAULT_DB_URL = "sqlite+aiosqlite:///./data/ackbot.db"
ENV_PREFIX = "ACKBOT_STORE_"
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


@dataclass(frozen=True)
class StoreConfig:
    listen: str = "127.0.0.1:50051"
    db_url: str = DEFAULT_DB_URL
    log_level: str = "INFO"
    max_attempts: int = 5
    default_lease_seconds: float = 60.0
    default_max_in_flight: int = 16
    default_page_size: int = 100
    grace_seconds: float = 5.0
    # Seconds a write waits on a locked SQLite database before the call fails with UNAVAILABLE.
    lock_timeout_seconds: float = 5.0
    # FULL: a commit is fsynced before the call returns (survives a power cut). NORMAL: written
    # to the OS before the call returns, fsynced at checkpoints (survives a kill -9 of the
    # store, may lose the last commits to a power cut or an OS crash).
    sqlite_synchronous: str = "FULL"
    limits: Limits = field(default_factory=Limits)


def build_flags(env: Mapping[str, str]) -> EnvFlags:
    defaults = StoreConfig()
    parser = argparse.ArgumentParser(
        prog="ackbot-store",
        description="The ackbot message store (gRPC). Every flag can also be set by "
        f"environment: {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}LISTEN; a flag wins over it.",
    )

    flags = EnvFlags(parser, env, ENV_PREFIX)
    option = flags.add

    option(
        "--listen", defaults.listen, "HOST:PORT to serve on; port 0 picks a free one", type=address
    )
    option("--db", defaults.db_url, "SQLAlchemy async database URL")
    flags.add_log_level(defaults.log_level)
    option(
        "--max-attempts",
        defaults.max_attempts,
        "deliveries without MarkProcessed before a message becomes DEAD",
        type=int_in(1),
    )
    option(
        "--default-lease-seconds",
        defaults.default_lease_seconds,
        "lease of a delivery when the stream does not set one",
        type=seconds_in(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
    )
    option(
        "--grace-seconds",
        defaults.grace_seconds,
        "how long in-flight calls may finish on shutdown",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    option(
        "--lock-timeout-seconds",
        defaults.lock_timeout_seconds,
        "how long a write waits on a locked database before UNAVAILABLE",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    option(
        "--sqlite-synchronous",
        defaults.sqlite_synchronous,
        "FULL: every acknowledged write survives a power cut; NORMAL: it survives a kill of "
        "the store, not a power cut (SQLite only; see docs/performance.md)",
        choices=SQLITE_SYNCHRONOUS,
        type=str.upper,
    )
    option(
        "--max-text-bytes",
        defaults.limits.max_text_bytes,
        "largest message text, in UTF-8 bytes",
        type=int_in(1),
    )
    option(
        "--max-request-bytes",
        defaults.limits.max_request_bytes,
        "largest request; larger ones get RESOURCE_EXHAUSTED",
        type=int_in(1),
    )
    return flags


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> StoreConfig:
    env = os.environ if env is None else env
    args = build_flags(env).parse(argv)
    limits = Limits(max_text_bytes=args.max_text_bytes, max_request_bytes=args.max_request_bytes)
    return StoreConfig(
        listen=args.listen,
        db_url=args.db,
        log_level=args.log_level,
        max_attempts=args.max_attempts,
        default_lease_seconds=args.default_lease_seconds,
        grace_seconds=args.grace_seconds,
        lock_timeout_seconds=args.lock_timeout_seconds,
        sqlite_synchronous=args.sqlite_synchronous,
        limits=limits,
    )
