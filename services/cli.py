"""The `ackbot` command line: post, get, list, tail, dead and requeue messages on a store;
erase an author's messages and purge old settled ones.

It is for people and shell scripts; the services talk to the store through the generated stubs.
Output is one line per message, or with `--json` one JSON object per line (the proto's field
names, as MessageToDict writes them). A failed call prints `error: CODE: details` on stderr and
exits 1; a usage error exits 2 (argparse's convention). No traceback reaches the user.

The formatting functions are pure (protobuf in, text out) so that tests/cli checks them without
a store; the commands below them are thin loops over the unary RPCs, on the sync gRPC API.
"""

from __future__ import annotations

# First: gRPC core reads GRPC_VERBOSITY when grpc is first imported (see the module).
import ackbot.common.grpc_core_logs  # noqa: F401

# isort: split
import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, Unpack

import grpc
import shtab
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from ackbot.client.listing import LAST_MESSAGE_REQUEST, ListFilters, PageWalk
from ackbot.common.auth import read_token
from ackbot.common.flags import (
    MAX_WAIT_SECONDS,
    address,
    duration_seconds,
    int_in,
    seconds_in,
    version_line,
)
from ackbot.common.limits import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TEXT_BYTES
from ackbot.common.serving import client_credentials
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

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
# Every unary call gets a deadline, so a store that hangs cannot hang the terminal.
CALL_TIMEOUT_SECONDS = 10.0
WATCH_RECONNECT_SECONDS = 1.0
WATCH_EVENT_NAMES = {
    pb.WATCH_EVENT_TYPE_CREATED: "created",
    pb.WATCH_EVENT_TYPE_STATE_CHANGED: "changed",
    pb.WATCH_EVENT_TYPE_DELETED: "deleted",
}
WAIT_POLL_SECONDS = 0.05
# The create times a store accepts (64-bit nanoseconds: 1677-09-21 to 2262-04-11), in Unix
# milliseconds, so a time out of range is a usage error here, not a traceback.
MAX_CREATE_TIME_MS = (2**63 - 1) // 10**6
MIN_CREATE_TIME_MS = -MAX_CREATE_TIME_MS
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")

STATES: Mapping[str, pb.MessageState] = {
    "pending": pb.MESSAGE_STATE_PENDING,
    "leased": pb.MESSAGE_STATE_LEASED,
    "processed": pb.MESSAGE_STATE_PROCESSED,
    "dead": pb.MESSAGE_STATE_DEAD,
    "held": pb.MESSAGE_STATE_HELD,
    "deleted": pb.MESSAGE_STATE_DELETED,
}
_STATE_NAMES = {value: name.upper() for name, value in STATES.items()}
# Wide enough for the longest state name, so the author column lines up.
_STATE_WIDTH = max(len(name) for name in _STATE_NAMES.values())
# Control characters the store accepts in text; shown escaped so a message stays on one line.
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


# -- pure formatting --------------------------------------------------------------------------


def state_name(state: int) -> str:
    """PENDING, LEASED, PROCESSED, DEAD; UNSPECIFIED or the number for anything else."""
    if state == pb.MESSAGE_STATE_UNSPECIFIED:
        return "UNSPECIFIED"
    return _STATE_NAMES.get(state, str(state))  # type: ignore[call-overload]


def one_line(text: str) -> str:
    """The text with line breaks and tabs escaped, so one message is one line."""
    return text.translate(_ESCAPES)


def format_timestamp(stamp: timestamp_pb2.Timestamp) -> str:
    """UTC, ISO 8601, to the millisecond: 2025-10-24T19:20:53.306Z."""
    moment = datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.nanos // 1_000_000:03d}Z"


def timestamp_from_ms(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def format_message(message: pb.Message) -> str:
    """One line: id, state, author: text, then what links it to its reply or original."""
    line = (
        f"{message.id}  {state_name(message.state):<{_STATE_WIDTH}}  "
        f"{message.author}: {one_line(message.text)}"
    )
    notes = []
    if message.reply_to:
        notes.append(f"reply to {message.reply_to}")
    if message.reply_id:
        notes.append(f"reply {message.reply_id}")
    if message.state == pb.MESSAGE_STATE_DEAD:
        notes.append(f"attempts {message.delivery_attempts}")
    if message.last_error and message.state != pb.MESSAGE_STATE_PROCESSED:
        notes.append(f"last error: {one_line(message.last_error)}")
    if notes:
        line += "  [" + "; ".join(notes) + "]"
    return line


def format_message_details(message: pb.Message) -> str:
    """Every field that is set, one per line, for `ackbot get`."""
    rows: list[tuple[str, str]] = [
        ("id", message.id),
        ("state", state_name(message.state)),
        ("author", message.author),
        ("text", one_line(message.text)),
        ("sequence", str(message.sequence)),
    ]
    for label, field in (
        ("create time", "create_time"),
        ("receive time", "receive_time"),
        ("lease expires", "lease_expire_time"),
        ("process time", "process_time"),
    ):
        if message.HasField(field):
            rows.append((label, format_timestamp(getattr(message, field))))
    if message.reply_to:
        rows.append(("reply to", message.reply_to))
    if message.reply_id:
        rows.append(("reply id", message.reply_id))
    if message.conversation_id:
        rows.append(("conversation", message.conversation_id))
    rows.append(("attempts", str(message.delivery_attempts)))
    if message.last_error:
        rows.append(("last error", one_line(message.last_error)))
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows)


def proto_dict(proto: Message, *, every_field: bool = False) -> dict[str, Any]:
    """A protobuf message as JSON data, with the proto's own field names; `every_field` also
    writes the fields left at their defaults (a count of 0)."""
    return json_format.MessageToDict(
        proto, preserving_proto_field_name=True, always_print_fields_with_no_presence=every_field
    )


def json_line(data: Mapping[str, Any]) -> str:
    """One JSON object on one line: what every `--json` output prints."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def message_to_json(message: pb.Message) -> str:
    """One JSON object on one line, with the proto's own field names."""
    return json_line(proto_dict(message))


def render(message: pb.Message, *, as_json: bool, detailed: bool = False) -> str:
    if as_json:
        return message_to_json(message)
    return format_message_details(message) if detailed else format_message(message)


def format_error(code: grpc.StatusCode | None, details: str | None) -> str:
    name = code.name if code is not None else "UNKNOWN"
    return f"error: {name}: {details or 'no details'}"


def default_author(env: Mapping[str, str]) -> str:
    return env.get("USER") or "anonymous"


# -- argument parsing -------------------------------------------------------------------------


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

    _add_removal_commands(commands, common)

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


# -- commands ---------------------------------------------------------------------------------


def _emit(
    out: TextIO, message: pb.Message, args: argparse.Namespace, detailed: bool = False
) -> None:
    print(render(message, as_json=args.json, detailed=detailed), file=out, flush=True)


def _get(stub: pb_grpc.MessageStoreStub, message_id: str) -> pb.Message:
    request = pb.GetMessageRequest(id=message_id)
    return stub.GetMessage(request, timeout=CALL_TIMEOUT_SECONDS).message


def iter_messages(
    stub: pb_grpc.MessageStoreStub, **filters: Unpack[ListFilters]
) -> Iterator[pb.Message]:
    """Every matching message in arrival order (or newest first), one page at a time,
    following page tokens."""
    walk = PageWalk(**filters)
    while walk.request is not None:
        response = stub.ListMessages(walk.request, timeout=CALL_TIMEOUT_SECONDS)
        walk.advance(response)
        yield from response.messages


class InputError(Exception):
    """A command's input cannot be sent (too long, not UTF-8): one line, exit 2."""


def read_text(text: str, stdin: TextIO, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> str:
    """TEXT, or for `-` all of standard input less one final newline (what `echo` and most
    editors add, and what `$(...)` would drop). Reads no more than fits in `max_bytes` (and
    that newline): a store refuses a longer text, so 200 MB piped in is not read into memory."""
    if text != "-":
        return text
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes under it (a test's StringIO)
        data = stdin.read(max_bytes + 2).encode("utf-8", errors="surrogateescape")
    else:
        data = buffer.read(max_bytes + 2)
    if data.endswith(b"\n"):
        data = data[:-1]
    if len(data) > max_bytes:
        raise InputError(
            f"standard input is over {max_bytes} bytes: a store takes a text of at most its "
            f"--max-text-bytes (default {DEFAULT_MAX_TEXT_BYTES}) in a request of at most its "
            f"--max-request-bytes (default {DEFAULT_MAX_REQUEST_BYTES}); for a store that "
            "allows more, give post --max-text-bytes N"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"standard input is not UTF-8 (byte {exc.start})") from None


def cmd_post(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    create_ms = args.create_time_ms if args.create_time_ms is not None else time.time_ns() // 10**6
    message = pb.Message(
        id=args.id,
        author=args.author,
        text=read_text(args.text, sys.stdin, args.max_text_bytes),
        create_time=timestamp_from_ms(create_ms),
        conversation_id=args.conversation,
    )
    request = pb.CreateMessageRequest(message=message)
    response = stub.CreateMessage(request, timeout=CALL_TIMEOUT_SECONDS)
    if args.json:
        # The message's fields, and whether it was already stored (the text output's note).
        data = {**proto_dict(response.message), "already_existed": response.already_existed}
        print(json_line(data), file=out, flush=True)
    else:
        _emit(out, response.message, args)
    if response.already_existed and not args.json:
        print("(already existed: nothing was changed)", file=out, flush=True)
    if args.wait is None:
        return 0
    return _wait_for_reply(stub, response.message, args, out)


def _wait_for_reply(
    stub: pb_grpc.MessageStoreStub, message: pb.Message, args: argparse.Namespace, out: TextIO
) -> int:
    deadline = time.monotonic() + args.wait
    while message.state != pb.MESSAGE_STATE_PROCESSED:
        if message.state == pb.MESSAGE_STATE_DEAD:
            details = f"{message.id} is DEAD after {message.delivery_attempts} attempts"
            if message.last_error:
                details += f" (last error: {one_line(message.last_error)})"
            print(format_error(grpc.StatusCode.ABORTED, details), file=sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            state = state_name(message.state)
            details = f"no reply to {message.id} within {args.wait:g} s; it is {state}"
            print(format_error(grpc.StatusCode.DEADLINE_EXCEEDED, details), file=sys.stderr)
            return 1
        time.sleep(WAIT_POLL_SECONDS)
        message = _get(stub, message.id)
    if message.reply_id:
        _emit(out, _get(stub, message.reply_id), args)
    elif not args.json:
        print(f"({message.id} was processed without a reply)", file=out, flush=True)
    return 0


def cmd_get(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    _emit(out, _get(stub, args.id), args, detailed=True)
    return 0


def cmd_list(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    state = STATES[args.state] if args.state else pb.MESSAGE_STATE_UNSPECIFIED
    messages = iter_messages(
        stub,
        state=state,
        reply_to=args.reply_to,
        conversation_id=args.conversation,
        limit=args.limit,
        newest_first=args.newest_first,
    )
    for message in messages:
        _emit(out, message, args)
    return 0


def watch_events(
    stub: pb_grpc.MessageStoreStub,
    *,
    from_start: bool,
    stderr: TextIO,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[pb.WatchMessagesResponse]:
    """WatchMessages' events, from the current end (or from the first message), pushed by the
    store, until Ctrl-C. Each watch starts after the last sequence already shown (see
    WatchMessagesRequest), so when it ends with UNAVAILABLE (a store restart) the next one
    misses no arrival and repeats none."""
    last = 0
    if not from_start:
        response = stub.ListMessages(LAST_MESSAGE_REQUEST, timeout=CALL_TIMEOUT_SECONDS)
        last = response.messages[0].sequence if response.messages else 0
    while True:
        try:
            for event in stub.WatchMessages(pb.WatchMessagesRequest(after_sequence=last)):
                if event.type == pb.WATCH_EVENT_TYPE_CREATED:
                    last = event.message.sequence
                yield event
        except grpc.RpcError as exc:
            call: grpc.Call = exc  # type: ignore[assignment]
            if call.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            print(f"store unavailable ({call.details()}); watching again", file=stderr)
            sleep(WATCH_RECONNECT_SECONDS)


def cmd_tail(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    """Each message once, in the state it had when it arrived (replies are born PROCESSED)."""
    for event in watch_events(stub, from_start=args.from_start, stderr=sys.stderr):
        if event.type == pb.WATCH_EVENT_TYPE_CREATED:
            _emit(out, event.message, args)
    return 0


def cmd_watch(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    """Arrivals and the changes of state this store makes, one line each."""
    for event in watch_events(stub, from_start=args.from_start, stderr=sys.stderr):
        kind = WATCH_EVENT_NAMES.get(event.type, "unknown")
        if args.json:
            line = json_line({"event": kind, "message": proto_dict(event.message)})
        else:
            line = f"{kind:<8} {format_message(event.message)}"
        print(line, file=out, flush=True)
    return 0


def format_stats(stats: pb.GetStatsResponse) -> str:
    """A few aligned lines: counts by state, the oldest PENDING's wait, each open stream."""
    oldest = (
        f"{stats.oldest_pending_age.ToNanoseconds() / 1e9:.1f} s"
        if stats.HasField("oldest_pending_age")
        else "none pending"
    )
    lines = [
        f"store           {stats.store_id}",
        f"pending         {stats.pending_count}",
        f"leased          {stats.leased_count}",
        f"processed       {stats.processed_count}",
        f"dead            {stats.dead_count}",
        f"held            {stats.held_count}",
        f"deleted         {stats.deleted_count}",
        f"oldest pending  {oldest}",
        f"streams         {len(stats.streams)}",
    ]
    for stream in stats.streams:
        lease = stream.lease_duration.ToNanoseconds() / 1e9
        lines.append(
            f"  {stream.consumer}  in flight {stream.in_flight}/{stream.max_in_flight}"
            f"  lease {lease:g} s"
        )
    return "\n".join(lines)


def cmd_stats(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    stats = stub.GetStats(pb.GetStatsRequest(), timeout=CALL_TIMEOUT_SECONDS)
    if args.json:
        # Zero counts are printed too: a script reads `dead_count` whether or not it is 0.
        print(json_line(proto_dict(stats, every_field=True)), file=out, flush=True)
    else:
        print(format_stats(stats), file=out, flush=True)
    return 0


def cmd_dead(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    # Each line ends with [attempts N; last error: ...] (format_message), or the JSON fields.
    for message in iter_messages(stub, state=pb.MESSAGE_STATE_DEAD):
        _emit(out, message, args)
    return 0


def confirm(question: str, stdin: TextIO, stderr: TextIO) -> bool:
    print(f"{question} [y/N] ", end="", file=stderr, flush=True)
    return stdin.readline().strip().lower() in ("y", "yes")


def cmd_requeue(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    if not args.all_dead:
        request = pb.RequeueMessageRequest(id=args.id)
        response = stub.RequeueMessage(request, timeout=CALL_TIMEOUT_SECONDS)
        _emit(out, response.message, args)
        return 0
    # Listed first, then requeued: the count asked about is the count acted on.
    dead = [message.id for message in iter_messages(stub, state=pb.MESSAGE_STATE_DEAD)]
    if not dead:
        print("no DEAD messages", file=sys.stderr)
        return 0
    if not args.yes:
        # A script must say --yes: a prompt nobody answers would hang it, or act by default.
        if not sys.stdin.isatty():
            print(
                f"error: --all-dead would requeue {len(dead)} messages: add --yes to confirm "
                "when standard input is not a terminal",
                file=sys.stderr,
            )
            return 2
        if not confirm(f"Requeue {len(dead)} DEAD messages?", sys.stdin, sys.stderr):
            print("nothing requeued", file=sys.stderr)
            return 1
    failed = 0
    for message_id in dead:
        try:
            response = stub.RequeueMessage(
                pb.RequeueMessageRequest(id=message_id), timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            call: grpc.Call = exc  # type: ignore[assignment]
            if call.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise
            # Settled since it was listed (a late MarkProcessed, another operator): say so, go on.
            print(format_error(call.code(), call.details()), file=sys.stderr)
            failed += 1
            continue
        _emit(out, response.message, args)
    return 1 if failed else 0


# -- erasure and purge (issue 19): streams of progress, each safe to run again -------------

PURGE_STATES: Mapping[str, pb.MessageState] = {
    "processed": pb.MESSAGE_STATE_PROCESSED,
    "dead": pb.MESSAGE_STATE_DEAD,
    "deleted": pb.MESSAGE_STATE_DELETED,
}


def _add_removal_commands(commands: Any, common: argparse.ArgumentParser) -> None:
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


def _follow_progress(
    responses: Iterator[Any], field: str, verb: str, args: argparse.Namespace, out: TextIO
) -> int:
    """Prints each batch's count on stderr (a large erasure shows it moving), the total on
    `out`; exits 1 when the stream ended before `done`."""
    count = 0
    for batches, response in enumerate(responses, start=1):
        previous, count = count, getattr(response, field)
        if response.done:
            if args.json:
                print(json_line({field: str(count), "done": True}), file=out, flush=True)
            else:
                print(f"{verb} {count} messages", file=out, flush=True)
            return 0
        # From the second batch on, and only when it did something: one batch is no progress.
        if batches > 1 and count != previous:
            print(f"{verb} {count} so far", file=sys.stderr, flush=True)
    print(f"error: stopped after {count} messages; run it again to finish", file=sys.stderr)
    return 1


def cmd_erase(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    # No deadline: a large erasure streams progress for as long as it takes.
    responses = stub.EraseAuthor(pb.EraseAuthorRequest(author=args.author))
    return _follow_progress(responses, "deleted_count", "deleted", args, out)


def cmd_purge(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    request = pb.PurgeMessagesRequest(state=PURGE_STATES[args.state])
    request.older_than.FromNanoseconds(round(args.older_than * 1e9))
    responses = stub.PurgeMessages(request)
    return _follow_progress(responses, "removed_count", "removed", args, out)


def cmd_delete(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    response = stub.DeleteMessage(pb.DeleteMessageRequest(id=args.id), timeout=CALL_TIMEOUT_SECONDS)
    if args.json:
        print(json_line(proto_dict(response, every_field=True)), file=out, flush=True)
    elif response.already_deleted:
        print(f"{response.message.id} was already deleted", file=out, flush=True)
    else:
        print(
            f"deleted {response.message.id} ({response.deleted_count} messages with its reply)",
            file=out,
            flush=True,
        )
    return 0


def cmd_held(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    for message in iter_messages(stub, state=pb.MESSAGE_STATE_HELD):
        _emit(out, message, args)
    return 0


def cmd_approve(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    request = pb.ApproveMessageRequest(id=args.id)
    response = stub.ApproveMessage(request, timeout=CALL_TIMEOUT_SECONDS)
    _emit(out, response.message, args)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
