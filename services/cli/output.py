"""What the command line prints: pure functions, protobuf in, text out, so that tests/cli
checks them without a store. Text is one line per message; `--json` one JSON object per line
with the proto's field names, as MessageToDict writes them."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from ackbot.v1 import message_store_pb2 as pb

WATCH_EVENT_NAMES = {
    pb.WATCH_EVENT_TYPE_CREATED: "created",
    pb.WATCH_EVENT_TYPE_STATE_CHANGED: "changed",
    pb.WATCH_EVENT_TYPE_DELETED: "deleted",
}

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


def emit(
    out: TextIO, message: pb.Message, args: argparse.Namespace, detailed: bool = False
) -> None:
    print(render(message, as_json=args.json, detailed=detailed), file=out, flush=True)
