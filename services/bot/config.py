"""Bot settings: one frozen dataclass, read once from flags and environment in the entry point.

Each field made with `setting()` is also a flag and an ACKBOT_BOT_* variable (see
ackbot.common.flags).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ackbot.common.auth import read_token
from ackbot.common.backoff import MAX_RELEASE_RETRY_AFTER_SECONDS
from ackbot.common.flags import (
    MAX_WAIT_SECONDS,
    Command,
    address,
    int_in,
    load_settings,
    log_format_setting,
    log_level_setting,
    metrics_listen_setting,
    seconds_in,
    setting,
    switch_setting,
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
from ackbot.common.serving import is_loopback, split_host_port, tls_settings_problem

ENV_PREFIX = "ACKBOT_BOT_"
# Where the answers come from: the built-in persona (offline), any OpenAI-compatible
# chat-completions server, or Ollama's native chat API.
BACKENDS = ("persona", "openai", "ollama")
THINKING = ("auto", "off")
# What a reply written from a conversation that moved on meanwhile becomes (docs/semantics.md,
# "What ackbot-bot does with a delivery").
ON_STALE = ("supersede", "answer-each")
# The model server's API key is read from this variable when --llm-api-key-file is not set. It
# is deliberately not a flag: a key on the command line is visible to every user of the machine
# (ps), and a flag's value would show as its default in --help.
API_KEY_ENV = ENV_PREFIX + "LLM_API_KEY"
# The bot's bearer token for the store, when --token-file is not set; not a flag, like the key.
TOKEN_ENV = ENV_PREFIX + "TOKEN"
ALLOW_INSECURE_FLAG = "--allow-insecure-listen"
MAX_LLM_TOKENS = 1_000_000
MAX_LLM_TIMEOUT_SECONDS = 3600.0
# A context read is one ListMessages page, which holds at most 1000 messages.
MAX_CONTEXT_TURNS = 500
MAX_CONTEXT_CHARS = 1_000_000
MAX_MODEL_FAILURE_WINDOW = 1000
MAX_MODEL_PROBE_SECONDS = 3600.0

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


def _json_object(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return text


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2, got {text}")
    return value


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
    log_format: str = log_format_setting()
    metrics_listen: str | None = metrics_listen_setting()
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
    # The LLM backends (ackbot.bot.llm). Only read when backend is not "persona".
    backend: str = setting(
        "persona",
        "where replies come from: the built-in offline persona, an OpenAI-compatible "
        "chat-completions server (vLLM, llama.cpp, Ollama's /v1, hosted APIs), or Ollama's "
        "native /api/chat",
        choices=BACKENDS,
        type=str.lower,
    )
    llm_url: str = setting(
        "",
        "base URL of the model server, e.g. http://127.0.0.1:8080/v1 (openai) or "
        "http://127.0.0.1:11434 (ollama)",
        metavar="URL",
        shown_default="https://api.openai.com/v1 for openai, http://127.0.0.1:11434 for ollama",
    )
    llm_model: str = setting(
        "", "the model to ask (required with an LLM backend)", metavar="NAME", shown_default="none"
    )
    llm_api_key_file: str | None = setting(
        None,
        f"file holding the model server's API key; else the variable {API_KEY_ENV} is read",
        metavar="PATH",
        shown_default="none",
    )
    system_prompt: str = setting(
        "",
        "the model's instructions; {persona} in it becomes the persona's name",
        metavar="TEXT",
        shown_default="a short prompt naming the persona",
    )
    system_prompt_file: str | None = setting(
        None,
        "file holding the system prompt (instead of --system-prompt)",
        metavar="PATH",
        shown_default="none",
    )
    llm_max_tokens: int = setting(
        1024,
        "most tokens a reply may take; a reply cut there ends with an ellipsis",
        type=int_in(1, MAX_LLM_TOKENS),
        metavar="N",
    )
    llm_temperature: float | None = setting(
        None,
        "sampling temperature (0-2)",
        type=_temperature,
        metavar="T",
        shown_default="the server's",
    )
    llm_timeout_seconds: float = setting(
        120.0,
        "how long one request to the model server may take",
        type=seconds_in(0.0, MAX_LLM_TIMEOUT_SECONDS, low_inclusive=False),
        metavar="SECONDS",
    )
    llm_thinking: str = setting(
        "auto",
        "auto: the model thinks if it does by default; off: ask it not to think from the start "
        "(an empty reply is always retried once with thinking off)",
        choices=THINKING,
        type=str.lower,
    )
    # A conversation's earlier turns sent with a message (docs/semantics.md, "What ackbot-bot
    # does with a delivery"): the newest ones that fit both budgets.
    llm_context_turns: int = setting(
        10,
        "most earlier turns of the message's conversation sent to the model with it; 0: none",
        type=int_in(0, MAX_CONTEXT_TURNS),
        metavar="N",
    )
    llm_context_chars: int = setting(
        8000,
        "most characters of earlier turns sent to the model with a message",
        type=int_in(0, MAX_CONTEXT_CHARS),
        metavar="N",
    )
    # The model breaker (ackbot.bot.breaker; docs/semantics.md, "Whose failure it is").
    model_failure_window: int = setting(
        3,
        "timeouts and 5xx of the model server that hit this many different messages in a row "
        "are the server's, not the messages': the bot stops taking work until it answers",
        type=int_in(1, MAX_MODEL_FAILURE_WINDOW),
        metavar="N",
    )
    model_probe_max_seconds: float = setting(
        15.0,
        "while the model server is down it is probed from every 0.5 s, doubling, up to this",
        type=seconds_in(0.5, MAX_MODEL_PROBE_SECONDS),
        metavar="SECONDS",
    )
    on_stale: str = setting(
        "supersede",
        "a message of a conversation that a newer one overtook: supersede: processed without a "
        "reply, the newest answered with all of it; answer-each: answered anyway",
        choices=ON_STALE,
        type=str.lower,
    )
    # How an OpenAI-compatible server is asked not to think; servers spell it differently
    # (README, "LLM backends").
    llm_no_think_params: str = setting(
        '{"reasoning_effort": "none"}',
        "JSON fields added to an OpenAI-compatible request that asks the model not to think",
        type=_json_object,
        metavar="JSON",
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
    # Security (README "Security"). The bot's calls to its stores: TLS when --store-ca is given,
    # mutual TLS with --store-cert/--store-key, and the bot role's token on every call.
    store_ca: str | None = setting(
        None,
        "PEM CA that signed the stores' certificates: connect to them with TLS",
        metavar="PATH",
        shown_default="none (plaintext)",
    )
    store_cert: str | None = setting(
        None,
        "PEM client certificate to present to the stores (mutual TLS, with --store-ca)",
        metavar="PATH",
        shown_default="none",
    )
    store_key: str | None = setting(
        None, "PEM private key of --store-cert", metavar="PATH", shown_default="none"
    )
    token_file: str | None = setting(
        None,
        f"file holding the bot role's bearer token for the stores; else {TOKEN_ENV}",
        metavar="PATH",
        shown_default="none",
    )
    # The bot's own health + reflection server.
    tls_cert: str | None = setting(
        None, "PEM certificate chain for the bot's own server", metavar="PATH", shown_default="none"
    )
    tls_key: str | None = setting(
        None, "PEM private key of --tls-cert", metavar="PATH", shown_default="none"
    )
    tls_client_ca: str | None = setting(
        None,
        "PEM CA that client certificates of the bot's own server must be signed by (mutual TLS)",
        metavar="PATH",
        shown_default="none",
    )
    allow_insecure_listen: bool = switch_setting(
        "serve a non-loopback --listen address without TLS and a token"
    )
    # ACKBOT_BOT_TOKEN's value, set by load_config (--token-file is read at start instead, by
    # bearer_token); never shown (repr) or logged.
    token: str | None = field(default=None, repr=False, compare=False)

    def bearer_token(self) -> str | None:
        """The token sent to the stores: --token-file's, read now (OSError naming the flag when
        it cannot be), else ACKBOT_BOT_TOKEN's."""
        if self.token_file is not None:
            return read_token(self.token_file, "--token-file")
        return self.token

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
    env = os.environ if env is None else env
    config = load_settings(BotConfig, COMMAND, argv, env)
    problem = tls_settings_problem(config.tls_cert, config.tls_key, config.tls_client_ca)
    if problem is not None:
        _fail(*problem)
    if (config.store_cert is None) != (config.store_key is None) or (
        config.store_cert is not None and config.store_ca is None
    ):
        _fail("--store-cert", "--store-cert and --store-key go together, with --store-ca")
    token = env.get(TOKEN_ENV, "").strip() or None
    if (token or config.token_file) and config.store_ca is None:
        remote = [s for s in config.stores if not is_loopback(split_host_port(s)[0])]
        if remote:
            _fail("--store-ca", f"the token goes to {remote[0]} only over TLS: give the store's CA")
    consumer = config.consumer or default_consumer(
        config.persona, os.getpid() if pid is None else pid
    )
    return replace(config, consumer=consumer, token=token)


def _fail(flag: str, problem: str) -> None:
    print(f"{COMMAND.prog}: error: argument {flag}: {problem}", file=sys.stderr)
    raise SystemExit(2)
