"""The command line's grammar: the commands, their flags and defaults, and the options every
command takes (--store, --json, TLS and token), before the command or after it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ackbot.cli.output import STATES
from ackbot.common.flags import (
    MAX_WAIT_SECONDS,
    address,
    duration_seconds,
    int_in,
    seconds_in,
    version_line,
)
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES
from ackbot.v1 import message_store_pb2 as pb

DEFAULT_STORE = "127.0.0.1:50051"
STORE_ENV = "ACKBOT_STORE_ADDRESS"
# The caller's bearer token: from --token-file, else this variable. No flag holds the token
# itself, since a command line is visible to every user of the machine (ps).
TOKEN_ENV = "ACKBOT_TOKEN"
# TLS and token flags, and the variable each falls back to.
SECURITY_FLAGS: Mapping[str, tuple[str, str]] = {
    "--tls-ca": ("ACKBOT_TLS_CA", "PEM CA that signed the store's certificate: connect with TLS"),
    "--tls-cert": ("ACKBOT_TLS_CERT", "PEM client certificate for mutual TLS (with --tls-ca)"),
    "--tls-key": ("ACKBOT_TLS_KEY", "PEM private key of --tls-cert"),
    "--token-file": ("ACKBOT_TOKEN_FILE", f"file holding the bearer token (else ${TOKEN_ENV})"),
}
# The create times a store accepts (64-bit nanoseconds: 1677-09-21 to 2262-04-11), in Unix
# milliseconds, so a time out of range is a usage error here, not a traceback.
MAX_CREATE_TIME_MS = (2**63 - 1) // 10**6
MIN_CREATE_TIME_MS = -MAX_CREATE_TIME_MS
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")
PURGE_STATES: Mapping[str, pb.MessageState] = {
    "processed": pb.MESSAGE_STATE_PROCESSED,
    "dead": pb.MESSAGE_STATE_DEAD,
    "deleted": pb.MESSAGE_STATE_DELETED,
}


def default_author(env: Mapping[str, str]) -> str:
    return env.get("USER") or "anonymous"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """`--store` and `--json` work before the command and after it (`ackbot --json list`,
    `ackbot list --json`); on the subcommands they default to SUPPRESS so that leaving them
    out there keeps the value given before the command."""
    parser = argparse.ArgumentParser(
        prog="ackbot",
        description="Post, read and follow messages on an ackbot store.",
        epilog="Errors print 'error: CODE: details' on stderr and exit 1; usage errors exit 2.",
    )
    store_help = f"the store's HOST:PORT (env {STORE_ENV}; default %(default)s)"
    json_help = "print one JSON object per message (proto field names) instead of text"
    parser.add_argument(
        "--store", type=address, default=env.get(STORE_ENV, DEFAULT_STORE), help=store_help
    )
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("--version", action="version", version=version_line())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--version", action="version", version=version_line())
    common.add_argument(
        "--store", type=address, default=argparse.SUPPRESS, help="the store's HOST:PORT"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    for flag, (variable, help_text) in SECURITY_FLAGS.items():
        parser.add_argument(
            flag,
            default=env.get(variable) or None,
            metavar="PATH",
            help=f"{help_text} (env {variable})",
        )
        common.add_argument(flag, default=argparse.SUPPRESS, metavar="PATH", help=help_text)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    post = commands.add_parser("post", parents=[common], help="create a message")
    post.add_argument(
        "text",
        metavar="TEXT",
        help="the text; - reads it from standard input (one final newline dropped)",
    )
    author = default_author(env)
    post.add_argument(
        "--author", default=author, help=f"who writes it (default $USER or anonymous: {author})"
    )
    post.add_argument(
        "--id", default="", help="the message id; the store assigns one when left out"
    )
    post.add_argument(
        "--conversation",
        default="",
        metavar="ID",
        help="the conversation (thread) it belongs to: delivered in order, read as context",
    )
    post.add_argument(
        "--create-time-ms",
        type=int_in(MIN_CREATE_TIME_MS, MAX_CREATE_TIME_MS),
        default=None,
        metavar="MS",
        help="the client's create time in Unix milliseconds (default: now)",
    )
    post.add_argument(
        "--wait",
        type=seconds_in(0, MAX_WAIT_SECONDS, low_inclusive=False),
        default=None,
        metavar="SECONDS",
        help="wait up to SECONDS for the bot's reply and print it too",
    )
    post.add_argument(
        "--max-text-bytes",
        type=int_in(1),
        default=DEFAULT_MAX_TEXT_BYTES,
        metavar="N",
        help="with TEXT -, read at most N bytes of standard input (default %(default)s, the "
        "store's default --max-text-bytes; raise it for a store that allows more)",
    )

    get = commands.add_parser("get", parents=[common], help="show one message by id")
    get.add_argument("id", metavar="ID")

    listing = commands.add_parser(
        "list", parents=[common], help="list messages in arrival order, following page tokens"
    )
    listing.add_argument("--state", choices=sorted(STATES), help="only messages in this state")
    listing.add_argument("--reply-to", default="", metavar="ID", help="only the replies to ID")
    listing.add_argument(
        "--conversation", default="", metavar="ID", help="only the messages of conversation ID"
    )
    listing.add_argument(
        "--limit", type=int_in(1), default=None, metavar="N", help="stop after N messages"
    )
    listing.add_argument(
        "--newest-first",
        action="store_true",
        help="newest messages first (with --limit: the last N)",
    )

    tail = commands.add_parser(
        "tail", parents=[common], help="print messages and replies as they arrive (Ctrl-C stops)"
    )
    tail.add_argument("--from-start", action="store_true", help="print the existing messages first")
    watch = commands.add_parser(
        "watch",
        parents=[common],
        help="print arrivals and every change of state (delivered, processed, dead, ...) "
        "as the store makes it (Ctrl-C stops)",
    )
    watch.add_argument(
        "--from-start", action="store_true", help="print the existing messages first"
    )

    commands.add_parser(
        "dead",
        parents=[common],
        help="list the DEAD messages with their attempts and last error",
    )

    commands.add_parser(
        "stats",
        parents=[common],
        help="show messages by state, the oldest PENDING's wait and the open streams",
    )

    requeue = commands.add_parser(
        "requeue", parents=[common], help="move a DEAD message (or every one) back to PENDING"
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("id", metavar="ID", nargs="?", help="the message to requeue")
    which.add_argument(
        "--all-dead", action="store_true", help="requeue every DEAD message (asks first)"
    )
    requeue.add_argument(
        "--yes",
        action="store_true",
        help="do not ask before --all-dead (required when standard input is not a terminal)",
    )

    add_removal_commands(commands, common)

    # Moderation (admin role): delete, list the held, approve.
    delete = commands.add_parser(
        "delete",
        parents=[common],
        help="delete a message and its reply (a tombstone stays; idempotent)",
    )
    delete.add_argument("id", metavar="ID", help="the message (or reply) to delete")
    commands.add_parser(
        "held", parents=[common], help="list the messages HELD for moderation, oldest first"
    )
    approve = commands.add_parser(
        "approve", parents=[common], help="approve a HELD message: it is delivered at once"
    )
    approve.add_argument("id", metavar="ID", help="the HELD message to approve")

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash: "
        "`source <(ackbot completion bash)`; zsh: `ackbot completion zsh > ~/.zfunc/_ackbot`)",
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS)
    return parser


def add_removal_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    erase = commands.add_parser(
        "erase",
        parents=[common],
        help="delete every message of an author and the replies to them (tombstones stay); "
        "shows progress; run again to finish one cut short",
    )
    erase.add_argument("--author", required=True, help="the author, exactly as stored")
    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="remove settled messages older than a given age for good, as --retain-* does",
    )
    purge.add_argument(
        "--state",
        required=True,
        choices=sorted(PURGE_STATES),
        help="processed (with their replies), dead, or deleted (tombstones)",
    )
    purge.add_argument(
        "--older-than",
        required=True,
        type=duration_seconds,
        metavar="DURATION",
        help="by receive time: 7d, 12h, 30m, 45s (0: all of them)",
    )
