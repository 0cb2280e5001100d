"""The operator's commands: dead, stats and requeue; moderation (delete, held, approve); and
erase and purge, streams of progress, each safe to run again (issue 19)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import grpc

from ackbot.cli.messages import CALL_TIMEOUT_SECONDS, iter_messages
from ackbot.cli.options import PURGE_STATES
from ackbot.cli.output import emit, format_error, format_stats, json_line, proto_dict
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc


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
        emit(out, message, args)
    return 0


def confirm(question: str, stdin: TextIO, stderr: TextIO) -> bool:
    print(f"{question} [y/N] ", end="", file=stderr, flush=True)
    return stdin.readline().strip().lower() in ("y", "yes")


def cmd_requeue(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    if not args.all_dead:
        request = pb.RequeueMessageRequest(id=args.id)
        response = stub.RequeueMessage(request, timeout=CALL_TIMEOUT_SECONDS)
        emit(out, response.message, args)
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
        emit(out, response.message, args)
    return 1 if failed else 0


def follow_progress(
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
    return follow_progress(responses, "deleted_count", "deleted", args, out)


def cmd_purge(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    request = pb.PurgeMessagesRequest(state=PURGE_STATES[args.state])
    request.older_than.FromNanoseconds(round(args.older_than * 1e9))
    responses = stub.PurgeMessages(request)
    return follow_progress(responses, "removed_count", "removed", args, out)


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
        emit(out, message, args)
    return 0


def cmd_approve(stub: pb_grpc.MessageStoreStub, args: argparse.Namespace, out: TextIO) -> int:
    request = pb.ApproveMessageRequest(id=args.id)
    response = stub.ApproveMessage(request, timeout=CALL_TIMEOUT_SECONDS)
    emit(out, response.message, args)
    return 0
