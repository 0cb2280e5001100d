"""ackbot-web's settings: flags over ACKBOT_WEB_* variables, like the store's and the bot's."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ackbot.common.auth import read_token
from ackbot.common.flags import (
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
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, MAX_AUTHOR_CHARS
from ackbot.common.serving import is_loopback, split_host_port

ENV_PREFIX = "ACKBOT_WEB_"
COMMAND = Command(
    prog="ackbot-web",
    summary="The ackbot comment section's web front door: the widget and its public API.",
    env_prefix=ENV_PREFIX,
)
# Tokens are read from files or variables, never from flags (a flag shows in `ps`).
STORE_TOKEN_ENV = ENV_PREFIX + "STORE_TOKEN"
SITE_TOKEN_ENV = ENV_PREFIX + "SITE_TOKEN"
STORE_ADMIN_TOKEN_ENV = ENV_PREFIX + "STORE_ADMIN_TOKEN"
EDIT_SECRET_ENV = ENV_PREFIX + "EDIT_SECRET"
# Isso's window: long enough to fix a typo, short enough that a thread's answers stay put.
DEFAULT_EDIT_WINDOW_SECONDS = 15 * 60
# A guessable secret would let anyone forge keys to delete others' comments.
MIN_EDIT_SECRET_CHARS = 32

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def origin_list(text: str) -> tuple[str, ...]:
    """Comma-separated origins (scheme://host[:port]), each checked and lower-cased."""
    origins = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin like https://blog.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def network_list(text: str) -> tuple[Network, ...]:
    """Comma-separated IP addresses or networks (CIDR)."""
    return tuple(
        ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()
    )


@dataclass(frozen=True)
class WebConfig:
    listen: str = setting(
        "127.0.0.1:8080",
        "HOST:PORT the widget and the API are served on (HTTP/1.1); port 0 picks a free one",
        type=address,
        metavar="HOST:PORT",
    )
    store: str = setting(
        "127.0.0.1:50051", "HOST:PORT of the message store", type=address, metavar="HOST:PORT"
    )
    store_ca: str | None = setting(
        None,
        "PEM CA that signed the store's certificate: connect to it with TLS",
        metavar="PATH",
        shown_default="none (plaintext)",
    )
    store_cert: str | None = setting(
        None,
        "PEM client certificate to present to the store (mutual TLS, with --store-ca)",
        metavar="PATH",
        shown_default="none",
    )
    store_key: str | None = setting(
        None, "PEM private key of --store-cert", metavar="PATH", shown_default="none"
    )
    store_token_file: str | None = setting(
        None,
        f"file holding the producer role's bearer token for the store; else {STORE_TOKEN_ENV}",
        metavar="PATH",
        shown_default="none",
    )
    allowed_origins: tuple[str, ...] = setting(
        (),
        "comma-separated origins of the sites that may embed the comments (CORS); the front "
        "door's own pages are always allowed",
        type=origin_list,
        metavar="ORIGIN[,ORIGIN...]",
        shown_default="none",
    )
    trusted_proxies: tuple[Network, ...] = setting(
        (),
        "comma-separated addresses or networks of the reverse proxies in front: only a request "
        "from one of them is attributed to its X-Forwarded-For address",
        type=network_list,
        metavar="ADDRESS[,ADDRESS...]",
        shown_default="none (X-Forwarded-For is ignored)",
    )
    posts_per_minute: int = setting(
        6, "comments one address may post per minute (0: no limit)", type=int_in(0), metavar="N"
    )
    watches_per_address: int = setting(
        32, "threads one address may watch at once", type=int_in(1), metavar="N"
    )
    site_token_file: str | None = setting(
        None,
        "file holding the token a site's own backend sends (Authorization: Bearer) to post "
        f"without the per-address limits; else {SITE_TOKEN_ENV}",
        metavar="PATH",
        shown_default="none",
    )
    max_text_bytes: int = setting(
        4096,
        "longest comment in bytes of UTF-8, told to the reader before sending; at most the "
        f"store's --max-text-bytes ({DEFAULT_MAX_TEXT_BYTES} by default)",
        type=int_in(1, DEFAULT_MAX_TEXT_BYTES),
        metavar="BYTES",
    )
    max_author_chars: int = setting(
        40,
        f"longest name, in characters (at most {MAX_AUTHOR_CHARS})",
        type=int_in(1, MAX_AUTHOR_CHARS),
        metavar="N",
    )
    edit_window_seconds: int = setting(
        DEFAULT_EDIT_WINDOW_SECONDS,
        "how long a commenter may delete or edit their own comment (0: never)",
        type=int_in(0, 7 * 24 * 3600),
        metavar="SECONDS",
    )
    edit_secret_file: str | None = setting(
        None,
        "file holding the secret that signs commenters' edit keys; every front door of one "
        f"site needs the same; else {EDIT_SECRET_ENV}, else a random one per process",
        metavar="PATH",
        shown_default="random per process",
    )
    store_admin_token_file: str | None = setting(
        None,
        "file holding an admin-role token for the store, used only to delete a comment whose "
        f"writer proved it theirs (DeleteMessage); else {STORE_ADMIN_TOKEN_ENV}, else the "
        "--store-token-file token",
        metavar="PATH",
        shown_default="none",
    )
    hold_comments: bool = switch_setting(
        "hold every comment posted without the site token for moderation (ackbot approve); "
        "unset: the store's --hold-new-messages decides"
    )
    log_level: str = log_level_setting()
    log_format: str = log_format_setting()
    metrics_listen: str | None = metrics_listen_setting()
    grace_seconds: float = setting(
        5.0,
        "how long requests may finish on shutdown (open watches end at once)",
        type=seconds_in(0.0, 300.0),
        metavar="SECONDS",
    )
    allow_insecure_listen: bool = switch_setting(
        "serve a non-loopback --listen address (put a TLS reverse proxy in front)"
    )
    # The tokens' values (from the files or the variables), read by load_config; never shown.
    store_token: str | None = field(default=None, repr=False, compare=False)
    site_token: str | None = field(default=None, repr=False, compare=False)
    store_admin_token: str | None = field(default=None, repr=False, compare=False)
    edit_secret: bytes | None = field(default=None, repr=False, compare=False)


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> WebConfig:
    """Parses flags over ACKBOT_WEB_* variables; a bad value exits 2 naming the flag."""
    env = os.environ if env is None else env
    config = load_settings(WebConfig, COMMAND, argv, env)
    if (config.store_cert is None) != (config.store_key is None) or (
        config.store_cert is not None and config.store_ca is None
    ):
        _fail("--store-cert", "--store-cert and --store-key go together, with --store-ca")
    try:
        store_token = (
            read_token(config.store_token_file, "--store-token-file")
            if config.store_token_file
            else env.get(STORE_TOKEN_ENV, "").strip() or None
        )
        site_token = (
            read_token(config.site_token_file, "--site-token-file")
            if config.site_token_file
            else env.get(SITE_TOKEN_ENV, "").strip() or None
        )
        store_admin_token = (
            read_token(config.store_admin_token_file, "--store-admin-token-file")
            if config.store_admin_token_file
            else env.get(STORE_ADMIN_TOKEN_ENV, "").strip() or None
        )
        edit_secret_text = (
            read_token(config.edit_secret_file, "--edit-secret-file")
            if config.edit_secret_file
            else env.get(EDIT_SECRET_ENV, "").strip() or None
        )
    except OSError as exc:
        flag, _, problem = str(exc).partition(": ")
        _fail(flag, problem)
    if edit_secret_text is not None and len(edit_secret_text) < MIN_EDIT_SECRET_CHARS:
        _fail(
            "--edit-secret-file",
            f"the secret must be at least {MIN_EDIT_SECRET_CHARS} characters "
            "(openssl rand -hex 32)",
        )
    if (store_token or store_admin_token) and config.store_ca is None:
        host, _ = split_host_port(config.store)
        if not is_loopback(host):
            _fail("--store-ca", f"the token goes to {config.store} only over TLS: give the CA")
    if not config.allow_insecure_listen and not is_loopback(split_host_port(config.listen)[0]):
        _fail(
            "--listen",
            f"{config.listen} is not loopback: serve it behind a TLS reverse proxy and pass "
            "--allow-insecure-listen",
        )
    return replace(
        config,
        store_token=store_token,
        site_token=site_token,
        store_admin_token=store_admin_token,
        edit_secret=edit_secret_text.encode() if edit_secret_text is not None else None,
    )


def _fail(flag: str, problem: str) -> None:
    print(f"{COMMAND.prog}: error: argument {flag}: {problem}", file=sys.stderr)
    raise SystemExit(2)
