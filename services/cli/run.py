"""`ackbot`'s main: parse, open the channel to the store, run the command, and turn every
failure into its exit code (1 for a failed call, `error: CODE: details` on stderr; 2 for a usage
error; 130 for Ctrl-C). No traceback reaches the user."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

import grpc
import shtab

from ackbot.cli.admin import (
    cmd_approve,
    cmd_dead,
    cmd_delete,
    cmd_erase,
    cmd_held,
    cmd_purge,
    cmd_requeue,
    cmd_stats,
)
from ackbot.cli.messages import (
    InputError,
    cmd_get,
    cmd_list,
    cmd_post,
    cmd_tail,
    cmd_watch,
)
from ackbot.cli.options import SECURITY_FLAGS, STORE_ENV, TOKEN_ENV, build_parser
from ackbot.cli.output import format_error
from ackbot.common.auth import read_token
from ackbot.common.limits import DEFAULT_MAX_REQUEST_BYTES
from ackbot.common.serving import client_credentials
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

COMMANDS: Mapping[str, Callable[[pb_grpc.MessageStoreStub, argparse.Namespace, TextIO], int]] = {
    "post": cmd_post,
    "get": cmd_get,
    "list": cmd_list,
    "tail": cmd_tail,
    "watch": cmd_watch,
    "dead": cmd_dead,
    "stats": cmd_stats,
    "requeue": cmd_requeue,
    "erase": cmd_erase,
    "purge": cmd_purge,
    "delete": cmd_delete,
    "held": cmd_held,
    "approve": cmd_approve,
}


def open_channel(args: argparse.Namespace, env: Mapping[str, str]) -> grpc.Channel:
    """The channel to the store: TLS by --tls-ca (mutual with --tls-cert/--tls-key), the token
    from --token-file or ACKBOT_TOKEN on every call. Raises ValueError or OSError, naming the
    flag, when they cannot be used."""
    token = env.get(TOKEN_ENV, "").strip() or None
    if args.token_file is not None:
        token = read_token(args.token_file, "--token-file")
    if (args.tls_cert is None) != (args.tls_key is None) or (
        args.tls_cert is not None and args.tls_ca is None
    ):
        raise ValueError("--tls-cert and --tls-key go together, with --tls-ca")
    credentials = client_credentials(
        args.store, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, token=token
    )
    if credentials is None:
        return grpc.insecure_channel(args.store)
    return grpc.secure_channel(args.store, credentials)


def not_utf8(args: argparse.Namespace) -> str | None:
    """The first argument that is not valid UTF-8 (the shell passed bytes that are not, which
    Python keeps as lone surrogates), or None."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return name.upper() if name in ("text", "id") else "--" + name.replace("_", "-")
    return None


def error_hint(code: grpc.StatusCode | None, details: str | None, args: argparse.Namespace) -> str:
    """What to check, for the errors whose gRPC details alone leave the user guessing."""
    details = details or ""
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
        if args.tls_ca is not None and ("handshake" in details.lower() or "SSL" in details):
            return (
                " (TLS handshake failed: check that --tls-ca signed the store's certificate, "
                "that the certificate names the --store host, and that the store serves TLS)"
            )
        if "Socket closed" in details and args.tls_ca is None:
            return f" (if the store serves TLS, give --tls-ca or {SECURITY_FLAGS['--tls-ca'][0]})"
        return f" (is a store running at {args.store}? set --store or {STORE_ENV})"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        return (
            " (the request is over the store's --max-request-bytes, default "
            f"{DEFAULT_MAX_REQUEST_BYTES}; a text is at most its --max-text-bytes)"
        )
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(os.environ)
    args = parser.parse_args(argv)
    bad = not_utf8(args)
    if bad is not None:
        parser.error(f"{bad} is not valid UTF-8")
    try:
        if args.command == "completion":
            # Generated from the parser itself, so it always offers exactly today's commands
            # and flags; needs no store.
            print(shtab.complete(parser, shell=args.shell), flush=True)
            return 0
        try:
            channel = open_channel(args, os.environ)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
        with channel:
            stub = pb_grpc.MessageStoreStub(channel)
            return COMMANDS[args.command](stub, args, sys.stdout)
    except InputError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        # Every RpcError the sync stubs raise is also a grpc.Call with the status.
        call: grpc.Call = exc  # type: ignore[assignment]
        hint = error_hint(call.code(), call.details(), args)
        print(format_error(call.code(), call.details()) + hint, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is how `tail` ends; 130 is the shell's code for "stopped by SIGINT".
        return 130
    except BrokenPipeError:
        # The reader went away (`ackbot list | head`): say nothing more, and keep Python's
        # final flush of stdout from failing again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
