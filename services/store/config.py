"""Store settings: one frozen dataclass, read once from flags and environment in the entry point."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ackbot.common.serving import split_host_port

DEFAULT_DB_URL = "sqlite+aiosqlite:///./data/ackbot.db"
ENV_PREFIX = "ACKBOT_STORE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Limits:
    """Input limits from SEMANTICS.md; each rejection names the field and the limit."""

    max_id_chars: int = 128
    max_author_chars: int = 64
    max_text_bytes: int = 16 * 1024
    max_reason_chars: int = 1024
    max_request_bytes: int = 64 * 1024
    min_lease_seconds: float = 1.0
    max_lease_seconds: float = 3600.0
    max_retry_after_seconds: float = 3600.0
    min_in_flight: int = 1
    max_in_flight: int = 1000
    max_page_size: int = 1000


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
    limits: Limits = field(default_factory=Limits)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def _address(text: str) -> str:
    try:
        split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = StoreConfig()
    parser = argparse.ArgumentParser(
        prog="ackbot-store",
        description="The ackbot message store (gRPC). Every flag can also be set by "
        f"environment: {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}LISTEN; a flag wins over it.",
    )

    def option(flag: str, default: object, help_text: str, **kwargs: object) -> None:
        env_name = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(
            flag,
            # An empty variable counts as unset, as it does for the bot.
            default=env.get(env_name) or default,
            help=f"{help_text} (env {env_name}; default %(default)s)",
            **kwargs,
        )

    option(
        "--listen", defaults.listen, "HOST:PORT to serve on; port 0 picks a free one", type=_address
    )
    option("--db", defaults.db_url, "SQLAlchemy async database URL")
    option("--log-level", defaults.log_level, "logging level", choices=LOG_LEVELS, type=str.upper)
    option(
        "--max-attempts",
        defaults.max_attempts,
        "deliveries without MarkProcessed before a message becomes DEAD",
        type=_positive_int,
    )
    option(
        "--default-lease-seconds",
        defaults.default_lease_seconds,
        "lease of a delivery when the stream does not set one",
        type=_positive_float,
    )
    option(
        "--grace-seconds",
        defaults.grace_seconds,
        "how long in-flight calls may finish on shutdown",
        type=_positive_float,
    )
    option(
        "--lock-timeout-seconds",
        defaults.lock_timeout_seconds,
        "how long a write waits on a locked database before UNAVAILABLE",
        type=_positive_float,
    )
    option(
        "--max-text-bytes",
        defaults.limits.max_text_bytes,
        "largest message text, in UTF-8 bytes",
        type=_positive_int,
    )
    option(
        "--max-request-bytes",
        defaults.limits.max_request_bytes,
        "largest request; larger ones get RESOURCE_EXHAUSTED",
        type=_positive_int,
    )
    return parser


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> StoreConfig:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    # argparse converts string defaults (values from the environment) with the flag's `type`,
    # and reports a bad one under the flag's name, but it does not check them against `choices`.
    if args.log_level not in LOG_LEVELS:
        parser.error(f"argument --log-level: invalid choice: {args.log_level!r}")
    if not Limits.min_lease_seconds <= args.default_lease_seconds <= Limits.max_lease_seconds:
        parser.error(
            f"argument --default-lease-seconds: must be between {Limits.min_lease_seconds:g} "
            f"and {Limits.max_lease_seconds:g}, got {args.default_lease_seconds:g}"
        )
    limits = Limits(max_text_bytes=args.max_text_bytes, max_request_bytes=args.max_request_bytes)
    return StoreConfig(
        listen=args.listen,
        db_url=args.db,
        log_level=args.log_level,
        max_attempts=args.max_attempts,
        default_lease_seconds=args.default_lease_seconds,
        grace_seconds=args.grace_seconds,
        lock_timeout_seconds=args.lock_timeout_seconds,
        limits=limits,
    )
