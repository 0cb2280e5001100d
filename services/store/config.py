"""Store settings: one frozen dataclass, read once from flags and environment in the entry point.

Each field made with `setting()` is also a flag and an ACKBOT_STORE_* variable (see
ackbot.common.flags); the others are fixed defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ackbot.common.auth import ROLE_NAMES, Authenticator, Role, parse_cert_roles, read_token
from ackbot.common.flags import (
    MAX_WAIT_SECONDS,
    Command,
    address,
    duration_seconds,
    int_in,
    load_settings,
    log_format_setting,
    log_level_setting,
    metrics_listen_setting,
    seconds_in,
    setting,
    switch_setting,
)
from ackbot.common.limits import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TEXT_BYTES,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    Limits,
)
from ackbot.common.serving import tls_settings_problem

DEFAULT_DB_URL = "sqlite+aiosqlite:///./data/ackbot.db"
ENV_PREFIX = "ACKBOT_STORE_"
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")
# The shortest default statement timeout on PostgreSQL, however short --dead-after-seconds is.
STATEMENT_TIMEOUT_FLOOR_SECONDS = 30.0

# A role's token comes from its --ROLE-token-file, else from this variable (ROLE upper-case).
# Deliberately no flag for a token itself: the command line is visible to every user (ps).
TOKEN_ENV = ENV_PREFIX + "{}_TOKEN"
ALLOW_INSECURE_FLAG = "--allow-insecure-listen"

COMMAND = Command(
    prog="ackbot-store", summary="The ackbot message store (gRPC).", env_prefix=ENV_PREFIX
)


def _cert_roles(text: str) -> str:
    try:
        parse_cert_roles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


@dataclass(frozen=True)
class StoreConfig:
    listen: str = setting(
        "127.0.0.1:50051", "HOST:PORT to serve on; port 0 picks a free one", type=address
    )
    db_url: str = setting(
        DEFAULT_DB_URL,
        "database URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB",
        flag="--db",
    )
    log_level: str = log_level_setting()
    log_format: str = log_format_setting()
    metrics_listen: str | None = metrics_listen_setting()
    max_attempts: int = setting(
        5, "deliveries without MarkProcessed before a message becomes DEAD", type=int_in(1)
    )
    # Moderation: a create that leaves `hold` unset is HELD until ApproveMessage.
    hold_new_messages: bool = switch_setting(
        "hold every new message for moderation (HELD until approved) unless its create sets hold"
    )
    default_lease_seconds: float = setting(
        60.0,
        "lease of a delivery when the stream does not set one",
        type=seconds_in(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
    )
    default_max_in_flight: int = 16
    default_page_size: int = 100
    grace_seconds: float = setting(
        5.0,
        "how long in-flight calls may finish on shutdown",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    # Seconds a write waits on a locked database before the call fails with UNAVAILABLE: SQLite's
    # busy_timeout; on PostgreSQL every session's lock_timeout (the insert turn, a row lock).
    lock_timeout_seconds: float = setting(
        5.0,
        "how long a write waits on a locked database before UNAVAILABLE",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    # FULL: a commit is fsynced before the call returns (survives a power cut). NORMAL: written
    # to the OS before the call returns, fsynced at checkpoints (survives a kill -9 of the
    # store, may lose the last commits to a power cut or an OS crash).
    sqlite_synchronous: str = setting(
        "FULL",
        "FULL: every acknowledged write survives a power cut; NORMAL: it survives a kill of "
        "the store, not a power cut (SQLite only; see docs/performance.md)",
        choices=SQLITE_SYNCHRONOUS,
        type=str.upper,
    )
    # Stores sharing a PostgreSQL database watch each other (registry.py): each heartbeats this
    # often, and one silent for dead_after_seconds is dead, its leases handed back. A store
    # killed outright is noticed sooner, by its database session's end. No effect on SQLite.
    heartbeat_seconds: float = setting(
        1.0,
        "how often a store on PostgreSQL tells the others it is alive, and looks for dead ones",
        type=seconds_in(0, 60, low_inclusive=False),
    )
    dead_after_seconds: float = setting(
        3.0,
        "a store on PostgreSQL whose heartbeat is this old is dead: the others hand back its "
        "leases (at least twice --heartbeat-seconds)",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    # PostgreSQL only: bounds the server enforces on every session of this store, so that a
    # store stopped inside a transaction (SIGSTOP, a frozen VM, a lost host) holds its locks for
    # seconds, not for as long as it is stopped (docs/scaling.md, "A store that stalls"). Unset,
    # each follows --dead-after-seconds: a store that silent is dead to the others anyway.
    # --lock-timeout-seconds bounds every lock wait of its sessions too.
    db_idle_in_transaction_seconds: float | None = setting(
        None,
        "on PostgreSQL, how long a session of this store may sit idle inside a transaction "
        "before the server ends it and rolls it back",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
        shown_default="--dead-after-seconds",
    )
    db_statement_timeout_seconds: float | None = setting(
        None,
        "on PostgreSQL, the longest one statement of this store may run (schema upgrades excepted)",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
        shown_default="10 x --dead-after-seconds, at least 30",
    )
    db_keepalive_seconds: float | None = setting(
        None,
        "on PostgreSQL, after how many silent seconds the server probes this store's host "
        "(TCP keepalive); it ends the session after about twice as long without an answer",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
        shown_default="--dead-after-seconds",
    )
    # The two per-store limits; the rest of `limits` is fixed by the contract.
    max_text_bytes: int = setting(
        DEFAULT_MAX_TEXT_BYTES, "largest message text, in UTF-8 bytes", type=int_in(1)
    )
    max_request_bytes: int = setting(
        DEFAULT_MAX_REQUEST_BYTES,
        "largest request; larger ones get RESOURCE_EXHAUSTED",
        type=int_in(1),
    )
    # PostgreSQL only: stores sharing a database hear each other's work by notification, and
    # poll for it this often in case one was lost (see ackbot.store.listener).
    wake_poll_seconds: float = setting(
        2.0,
        "on PostgreSQL, how often the streams also look for work made by other stores, in "
        "case a notification was lost",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    listener_check_seconds: float = setting(
        5.0,
        "on PostgreSQL, how often the connection that hears other stores is checked (and how "
        "long it may take to answer)",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    # Retention (docs/semantics.md, "Deleting, holding, forgetting"): the sweeper (sweeper.py)
    # removes settled messages older than these, by receive_time; unset, kept forever.
    retain_processed: float | None = setting(
        None,
        "remove PROCESSED messages (with their replies) received longer ago than this "
        "(a duration: 30d, 12h, 90m)",
        type=duration_seconds,
        metavar="DURATION",
        shown_default="forever",
    )
    retain_dead: float | None = setting(
        None,
        "remove DEAD messages received longer ago than this (a duration)",
        type=duration_seconds,
        metavar="DURATION",
        shown_default="forever",
    )
    retain_deleted: float | None = setting(
        None,
        "remove the tombstones of deleted messages received longer ago than this (a "
        "duration); their ids are free again after that",
        type=duration_seconds,
        metavar="DURATION",
        shown_default="forever",
    )
    sweep_seconds: float = setting(
        60.0,
        "how often the retention sweeper looks for messages to remove (with a --retain-*)",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
    )
    # Security (README "Security", docs/operations.md). Files are read at start; a certificate
    # with its key turns TLS on, a client CA turns mutual TLS on (clients must present one).
    tls_cert: str | None = setting(
        None, "PEM certificate chain to serve TLS with", metavar="PATH", shown_default="none"
    )
    tls_key: str | None = setting(
        None, "PEM private key of --tls-cert", metavar="PATH", shown_default="none"
    )
    tls_client_ca: str | None = setting(
        None,
        "PEM CA that client certificates must be signed by: mutual TLS, every client presents one",
        metavar="PATH",
        shown_default="none",
    )
    producer_token_file: str | None = setting(
        None,
        f"file holding the producer role's bearer token; else {TOKEN_ENV.format('PRODUCER')}",
        metavar="PATH",
        shown_default="none",
    )
    bot_token_file: str | None = setting(
        None,
        f"file holding the bot role's bearer token; else {TOKEN_ENV.format('BOT')}",
        metavar="PATH",
        shown_default="none",
    )
    admin_token_file: str | None = setting(
        None,
        f"file holding the admin role's bearer token; else {TOKEN_ENV.format('ADMIN')}",
        metavar="PATH",
        shown_default="none",
    )
    cert_roles: str = setting(
        "",
        "client certificate identities (a SAN or the CN) and their roles "
        f"({'|'.join(ROLE_NAMES)}), with --tls-client-ca",
        type=_cert_roles,
        metavar="IDENTITY=ROLE[,IDENTITY=ROLE...]",
        shown_default="none",
    )
    allow_insecure_listen: bool = switch_setting(
        "serve a non-loopback --listen address without TLS and authentication"
    )
    no_migrate: bool = switch_setting(
        "start without migrating the schema, refusing a database not at this ackbot's "
        "revision (for deployments that run `ackbot-store migrate upgrade` as a step of "
        "their own)"
    )
    # Filled by load_config from the token files or variables; never shown (repr) or logged.
    tokens: Mapping[Role, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def authenticator(self) -> Authenticator:
        """Reads the token files (at start, like the TLS files: OSError naming the flag, never
        the token, when one cannot be used) over the tokens from the variables."""
        tokens = dict(self.tokens)
        for role in Role:
            path = getattr(self, f"{role.value}_token_file")
            if path is not None:
                tokens[role] = read_token(path, f"--{role.value}-token-file")
        if len(set(tokens.values())) < len(tokens):
            # One token for two roles would make the narrower role's limits meaningless.
            raise OSError("two roles have the same token; give each role its own")
        return Authenticator(tokens, parse_cert_roles(self.cert_roles))

    @property
    def idle_in_transaction_seconds(self) -> float:
        """--db-idle-in-transaction-seconds, or its default (derived)."""
        if self.db_idle_in_transaction_seconds is not None:
            return self.db_idle_in_transaction_seconds
        return self.dead_after_seconds

    @property
    def statement_timeout_seconds(self) -> float:
        """--db-statement-timeout-seconds, or its default: long enough for the slowest read
        (a page of a large table, GetStats), far shorter than a stall that matters."""
        if self.db_statement_timeout_seconds is not None:
            return self.db_statement_timeout_seconds
        return max(STATEMENT_TIMEOUT_FLOOR_SECONDS, 10 * self.dead_after_seconds)

    @property
    def keepalive_seconds(self) -> float:
        """--db-keepalive-seconds, or its default (derived)."""
        if self.db_keepalive_seconds is not None:
            return self.db_keepalive_seconds
        return self.dead_after_seconds

    @property
    def retention_seconds(self) -> dict[str, float]:
        """The --retain-* that are set, by the state they remove."""
        retain = {
            "PROCESSED": self.retain_processed,
            "DEAD": self.retain_dead,
            "DELETED": self.retain_deleted,
        }
        return {state: seconds for state, seconds in retain.items() if seconds is not None}

    @property
    def limits(self) -> Limits:
        """The limits this store enforces (derived, so it cannot disagree with the fields)."""
        return Limits(max_text_bytes=self.max_text_bytes, max_request_bytes=self.max_request_bytes)


def _fail(flag: str, problem: str) -> None:
    print(f"{COMMAND.prog}: error: argument {flag}: {problem}", file=sys.stderr)
    raise SystemExit(2)


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> StoreConfig:
    """Parses flags over ACKBOT_STORE_* variables; a bad value exits 2 with a message naming it."""
    env = os.environ if env is None else env
    config = load_settings(StoreConfig, COMMAND, argv, env)
    db_problem = check_db_url(config.db_url)
    if db_problem is not None:
        # One line, not argparse's usage block: the usage does not help fix a URL, the line does.
        print(f"{COMMAND.prog}: error: {db_problem}", file=sys.stderr)
        raise SystemExit(2)
    problem = tls_settings_problem(config.tls_cert, config.tls_key, config.tls_client_ca)
    if problem is not None:
        _fail(*problem)
    if config.cert_roles and config.tls_client_ca is None:
        _fail("--cert-roles", "needs --tls-client-ca: only a verified certificate has an identity")
    if config.dead_after_seconds < 2 * config.heartbeat_seconds:
        # One late heartbeat must not make a live store look dead.
        print(
            f"{COMMAND.prog}: error: argument --dead-after-seconds: must be at least twice "
            f"--heartbeat-seconds ({config.heartbeat_seconds:g}), got "
            f"{config.dead_after_seconds:g}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    tokens = {
        role: env[TOKEN_ENV.format(role.name)].strip()
        for role in Role
        if env.get(TOKEN_ENV.format(role.name), "").strip()
    }
    return replace(config, tokens=tokens)


# The drivers the store runs on: async ones (it serves from one event loop), and asyncpg for
# PostgreSQL because the listener (listener.py) speaks asyncpg directly.
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_DB_EXAMPLES = "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB"


def check_db_url(url: str) -> str | None:
    """What is wrong with `url` as the store's --db, and what to write instead, in one line
    (any password masked); None when the store can run on it. Only the URL's form is checked:
    whether the database opens is found out at start (exit 1, not 2)."""
    # Imported here: the flags of every command are parsed before anything heavy is loaded.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return f"--db {url}: not a database URL; write {_DB_EXAMPLES}"
    shown = parsed.render_as_string(hide_password=True)
    # Read from the name itself: SQLAlchemy's own getters load the dialect, which fails for
    # names it does not know (e.g. `postgres`).
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":  # SQLAlchemy dropped this alias, people still write it
        backend = "postgresql"
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        return f"--db {shown}: {backend} is not supported; use {_DB_EXAMPLES}"
    if driver != wanted:
        fixed = parsed.set(drivername=f"{backend}+{wanted}")
        return (
            f"--db {shown}: use {fixed.render_as_string(hide_password=True)} "
            f"(the store needs the async driver {wanted})"
        )
    return None
