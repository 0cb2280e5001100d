"""Bot settings: one frozen dataclass, read once from flags and environment in the entry point."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ackbot.common.backoff import MAX_RELEASE_RETRY_AFTER_SECONDS
from ackbot.common.flags import MAX_WAIT_SECONDS, EnvFlags, address, int_in, seconds_in

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

ENV_PREFIX = "ACKBOT_BOT_"


@dataclass(frozen=True)
class BotConfig:
    store: str = "127.0.0.1:50051"
    listen: str = "127.0.0.1:50052"
    persona: str = "ackbot"
    max_in_flight: int = 16
    lease_seconds: float = 60.0
    log_level: str = "INFO"
    grace_seconds: float = 10.0
    # Base of the exponential `retry_after` sent with ReleaseMessage after a responder failure.
    retry_base_seconds: float = 1.0
    # MODULE:ATTR of a responder factory; None means the built-in PersonaResponder.
    responder: str | None = None
    # Sent as StreamUnprocessedRequest.consumer; empty means "persona-pid" (see default_consumer).
    consumer: str = ""


def default_consumer(persona: str, pid: int) -> str:
    suffix = f"-{pid}"
    return persona[: MAX_CONSUMER_CHARS - len(suffix)] + suffix


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


def build_flags(env: Mapping[str, str]) -> EnvFlags:
    defaults = BotConfig()
    parser = argparse.ArgumentParser(
        prog="ackbot-bot",
        description="The ackbot bot: answers each stored message once. Every flag can also be "
        f"set by environment: {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}STORE; a flag wins over it.",
    )

    flags = EnvFlags(parser, env, ENV_PREFIX)
    option = flags.add

    option(
        "--store",
        defaults.store,
        "HOST:PORT of the message store",
        type=address,
        metavar="HOST:PORT",
    )
    option(
        "--listen",
        defaults.listen,
        "the bot's own health + reflection server; port 0 picks a free one",
        type=address,
        metavar="HOST:PORT",
    )
    option(
        "--persona",
        defaults.persona,
        "the bot's name: author of its replies",
        type=_name(MAX_AUTHOR_CHARS),
        metavar="NAME",
    )
    option(
        "--max-in-flight",
        defaults.max_in_flight,
        f"replies worked on at once ({MIN_IN_FLIGHT}-{MAX_IN_FLIGHT})",
        type=int_in(MIN_IN_FLIGHT, MAX_IN_FLIGHT),
        metavar="N",
    )
    option(
        "--lease-seconds",
        defaults.lease_seconds,
        f"lease of each delivery ({MIN_LEASE_SECONDS:g}-{MAX_LEASE_SECONDS:g}); extended while "
        "a reply takes longer than half of it",
        type=seconds_in(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
        metavar="SECONDS",
    )
    flags.add_log_level(defaults.log_level)
    option(
        "--grace-seconds",
        defaults.grace_seconds,
        "how long running replies may finish on shutdown before they are cancelled",
        type=seconds_in(0.0, MAX_WAIT_SECONDS),
        metavar="SECONDS",
    )
    option(
        "--retry-base-seconds",
        defaults.retry_base_seconds,
        "after a responder failure the message is retried after base * 2^(attempt-1) seconds, "
        f"at most {MAX_RELEASE_RETRY_AFTER_SECONDS:g}",
        type=seconds_in(0.0, MAX_RELEASE_RETRY_AFTER_SECONDS),
        metavar="SECONDS",
    )
    option(
        "--responder",
        defaults.responder,
        "a callable that takes the BotConfig and returns a Responder",
        type=_responder_spec,
        metavar="MODULE:ATTR",
        shown_default="the built-in offline persona",
    )
    option(
        "--consumer",
        defaults.consumer or None,
        "name of this bot in the store's logs",
        type=_name(MAX_CONSUMER_CHARS),
        metavar="NAME",
        shown_default="PERSONA-PID",
    )
    return flags


def load_config(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    pid: int | None = None,
) -> BotConfig:
    """Parses flags over ACKBOT_BOT_* variables; a bad value exits 2 with a message naming it."""
    env = os.environ if env is None else env
    args = build_flags(env).parse(argv)
    consumer = args.consumer or default_consumer(args.persona, os.getpid() if pid is None else pid)
    return BotConfig(
        store=args.store,
        listen=args.listen,
        persona=args.persona,
        max_in_flight=args.max_in_flight,
        lease_seconds=args.lease_seconds,
        log_level=args.log_level,
        grace_seconds=args.grace_seconds,
        retry_base_seconds=args.retry_base_seconds,
        responder=args.responder,
        consumer=consumer,
    )
