"""Bot settings: one frozen dataclass, read once from flags and environment in the entry point.

Each field made with `setting()` is also a flag and an ACKBOT_BOT_* variable (see
ackbot.common.flags).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ackbot.common.backoff import MAX_RELEASE_RETRY_AFTER_SECONDS
from ackbot.common.flags import (
    MAX_WAIT_SECONDS,
    Command,
    address,
    int_in,
    load_settings,
    log_level_setting,
    seconds_in,
    setting,
)

# The store's limits (docs/semantics.md) are checked here too, so a bad value fails at start,
# naming the flag, instead of as INVALID_ARGUMENT on every stream attempt. The persona is the
# author of every reply.
from ackbot.common.limits import (
    MAX_AUTHOR_CHARS,
    MAX_CONSUMER_CHARS,
    MAX_IN_FLIGHT,
    MAX_LEASE_SECONDS,
    MIN_IN_FLIGHT,
    MIN_LEASE_SECONDS,
    first_forbidden_char,
)
from ackbot.common.serving import split_host_port

ENV_PREFIX = "ACKBOT_BOT_"

COMMAND = Command(
    prog="ackbot-bot",
    summary="The ackbot bot: answers each stored message once.",
    env_prefix=ENV_PREFIX,
)


def _name(max_chars: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("must not be empty")
        if len(text) > max_chars:
            raise argparse.ArgumentTypeError(
                f"must be at most {max_chars} characters, got {len(text)}"
            )
        if first_forbidden_char(text, allow_newlines=False) is not None:
            raise argparse.ArgumentTypeError("must not contain control characters")
        return text

    return parse


def _responder_spec(text: str) -> str:
    module, sep, attr = text.partition(":")
    if not (sep and module and attr):
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTR, got {text!r}")
    return text


def store_list(text: str) -> str:
    """HOST:PORT[,HOST:PORT...]: the stores, in failover order, spaces around entries dropped.

    Hosts are compared without case and IPv6 brackets, so one store listed twice is caught
    however it is spelled; a name and an IP literal of the same machine are not told apart.
    """
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entries):
        raise argparse.ArgumentTypeError(
            f"empty entry in {text!r}: expected HOST:PORT or HOST:PORT,HOST:PORT,..."
        )
    seen: set[tuple[str, int]] = set()
    for entry in entries:
        address(entry)
        host, port = split_host_port(entry)
        if (host.lower(), port) in seen:
            raise argparse.ArgumentTypeError(f"{entry!r} is listed twice in {text!r}")
        seen.add((host.lower(), port))
    return ",".join(entries)


def split_stores(text: str) -> tuple[str, ...]:
    """The addresses of a `store_list` value (of a BotConfig made in code too, unchecked)."""
    return tuple(entry for entry in (part.strip() for part in text.split(",")) if entry)


@dataclass(frozen=True)
class BotConfig:
    # Several stores must share one database: a delivery from one is settled through another
    # when the first is unreachable (docs/semantics.md, "What ackbot-bot does with a delivery").
    store: str = setting(
        "127.0.0.1:50051",
        "HOST:PORT of the message store; several, comma-separated, are stores of one database, "
        "tried in that order when one is unreachable",
        type=store_list,
        metavar="HOST:PORT[,HOST:PORT...]",
    )
    listen: str = setting(
        "127.0.0.1:50052",
        "the bot's own health + reflection server; port 0 picks a free one",
        type=address,
        metavar="HOST:PORT",
    )
    persona: str = setting(
        "ackbot",
        "the bot's name: author of its replies",
        type=_name(MAX_AUTHOR_CHARS),
        metavar="NAME",
    )
    max_in_flight: int = setting(
        16,
        f"replies worked on at once ({MIN_IN_FLIGHT}-{MAX_IN_FLIGHT})",
        type=int_in(MIN_IN_FLIGHT, MAX_IN_FLIGHT),
        metavar="N",
    )
    lease_seconds: float = setting(
        60.0,
        f"lease of each delivery ({MIN_LEASE_SECONDS:g}-{MAX_LEASE_SECONDS:g}); extended while "
        "a reply takes longer than half of it",
        type=seconds_in(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
        metavar="SECONDS",
    )
    log_level: str = log_level_setting()
    grace_seconds: float = setting(
        10.0,
        "how long running replies may finish on shutdown before they are cancelled",
        type=seconds_in(0.0, MAX_WAIT_SECONDS),
        metavar="SECONDS",
    )
    # Base of the exponential `retry_after` sent with ReleaseMessage after a responder failure.
    retry_base_seconds: float = setting(
        1.0,
        "after a responder failure the message is retried after base * 2^(attempt-1) seconds, "
        f"at most {MAX_RELEASE_RETRY_AFTER_SECONDS:g}",
        type=seconds_in(0.0, MAX_RELEASE_RETRY_AFTER_SECONDS),
        metavar="SECONDS",
    )
    # MODULE:ATTR of a responder factory; None means the built-in PersonaResponder.
    responder: str | None = setting(
        None,
        "a callable that takes the BotConfig and returns a Responder",
        type=_responder_spec,
        metavar="MODULE:ATTR",
        shown_default="the built-in offline persona",
    )
    # Sent as StreamUnprocessedRequest.consumer; empty means "persona-pid" (see default_consumer,
    # which load_config applies: the pid is known only then).
    consumer: str = setting(
        "",
        "name of this bot in the store's logs",
        type=_name(MAX_CONSUMER_CHARS),
        metavar="NAME",
        shown_default="PERSONA-PID",
    )

    @property
    def stores(self) -> tuple[str, ...]:
        """The store addresses of `store`, in failover order."""
        return split_stores(self.store)


def default_consumer(persona: str, pid: int) -> str:
    suffix = f"-{pid}"
    return persona[: MAX_CONSUMER_CHARS - len(suffix)] + suffix


def load_config(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    pid: int | None = None,
) -> BotConfig:
    """Parses flags over ACKBOT_BOT_* variables; a bad value exits 2 with a message naming it."""
    config = load_settings(BotConfig, COMMAND, argv, os.environ if env is None else env)
    if config.consumer:
        return config
    consumer = default_consumer(config.persona, os.getpid() if pid is None else pid)
    return replace(config, consumer=consumer)
