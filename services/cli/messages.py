"""The message commands: post (and wait for the reply), get, list, tail and watch. Thin loops
over the unary RPCs and WatchMessages, on the sync gRPC API; every unary call has a deadline."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO, Unpack

import grpc

from ackbot.cli.output import (
    STATES,
    WATCH_EVENT_NAMES,
    emit,
    format_error,
    format_message,
    json_line,
    one_line,
    proto_dict,
    state_name,
    timestamp_from_ms,
)
from ackbot.client.listing import LAST_MESSAGE_REQUEST, ListFilters, PageWalk
from ackbot.common.limits import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TEXT_BYTES
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

# Every unary call gets a deadline, so a store that hangs cannot hang the terminal.
CALL_TIMEOUT_SECONDS = 10.0
WATCH_RECONNECT_SECONDS = 1.0
WAIT_POLL_SECONDS = 0.05


def get_message(stub: pb_grpc.MessageStoreStub, message_id: str) -> pb.Message:
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
        emit(out, response.message, args)
    if response.already_existed and not args.json:
        print("(already existed: nothing was changed)", file=out, flush=True)
    if args.wait is None:
        return 0
    return wait_for_reply(stub, response.message, args, out)


def wait_for_reply(
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
        message = get_message(stub, message.id)
    if message.reply_id:
        emit(out, get_message(stub, message.reply_id), args)
    elif not args.json:
        print(f"({message.id} was processed without a reply)", file=out, flush=True)
    return 0


def cmd_get(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    emit(out, get_message(stub, args.id), args, detailed=True)
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
        emit(out, message, args)
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
            emit(out, event.message, args)
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
