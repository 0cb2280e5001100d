"""Unit tests of the CLI's pure parts: formatting and argument parsing. The CLI against a real
store is exercised by tests/integration."""

from __future__ import annotations

import json

import grpc
import pytest

from ackbot import cli
from ackbot.v1 import message_store_pb2 as pb

ORIGIN_ID = "1761333653305-h0jgid21p"


def make_message(**fields) -> pb.Message:
    defaults = {"id": ORIGIN_ID, "author": "ana", "text": "Hello", "sequence": 7}
    return pb.Message(**{**defaults, **fields})


# -- formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (pb.MESSAGE_STATE_PENDING, "PENDING"),
        (pb.MESSAGE_STATE_LEASED, "LEASED"),
        (pb.MESSAGE_STATE_PROCESSED, "PROCESSED"),
        (pb.MESSAGE_STATE_DEAD, "DEAD"),
        (pb.MESSAGE_STATE_HELD, "HELD"),
        (pb.MESSAGE_STATE_DELETED, "DELETED"),
        (pb.MESSAGE_STATE_UNSPECIFIED, "UNSPECIFIED"),
        (99, "99"),
    ],
)
def test_state_name(state, name):
    assert cli.state_name(state) == name


def test_every_watch_event_type_has_a_name():
    named = set(cli.WATCH_EVENT_NAMES)
    assert named == set(pb.WatchEventType.values()) - {pb.WATCH_EVENT_TYPE_UNSPECIFIED}


def test_one_line_escapes_line_breaks_and_tabs():
    assert cli.one_line("a\nb\r\nc\td") == "a\\nb\\r\\nc\\td"
    assert cli.one_line("héllo ↳") == "héllo ↳"


def test_format_pending_message():
    line = cli.format_message(make_message(state=pb.MESSAGE_STATE_PENDING))
    assert line == f"{ORIGIN_ID}  PENDING    ana: Hello"


def test_format_processed_original_names_its_reply():
    message = make_message(state=pb.MESSAGE_STATE_PROCESSED, reply_id="r1", last_error="old")
    assert cli.format_message(message) == f"{ORIGIN_ID}  PROCESSED  ana: Hello  [reply r1]"


def test_format_reply_names_the_original():
    reply = make_message(
        id="r1", author="ackbot", text="Hi ana", state=pb.MESSAGE_STATE_PROCESSED, reply_to="m1"
    )
    assert cli.format_message(reply) == "r1  PROCESSED  ackbot: Hi ana  [reply to m1]"


def test_format_dead_message_shows_attempts_and_last_error():
    message = make_message(
        state=pb.MESSAGE_STATE_DEAD, delivery_attempts=5, last_error="boom\ntrace"
    )
    assert cli.format_message(message) == (
        f"{ORIGIN_ID}  DEAD       ana: Hello  [attempts 5; last error: boom\\ntrace]"
    )


def test_format_message_stays_on_one_line():
    assert "\n" not in cli.format_message(make_message(text="one\ntwo\n"))


def test_format_timestamp_is_utc_to_the_millisecond():
    stamp = cli.timestamp_from_ms(1761333653306)
    assert (stamp.seconds, stamp.nanos) == (1761333653, 306_000_000)
    assert cli.format_timestamp(stamp) == "2025-10-24T19:20:53.306Z"


def test_format_details_lists_set_fields_only():
    message = make_message(
        state=pb.MESSAGE_STATE_PROCESSED,
        create_time=cli.timestamp_from_ms(1761333653306),
        reply_id="r1",
        delivery_attempts=1,
    )
    text = cli.format_message_details(message)
    lines = text.splitlines()
    assert lines[0] == f"id:          {ORIGIN_ID}"
    assert "create time: 2025-10-24T19:20:53.306Z" in lines
    assert "reply id:    r1" in lines
    assert "attempts:    1" in lines
    assert not any(line.startswith(("reply to", "last error", "lease expires")) for line in lines)


def test_message_to_json_uses_proto_field_names_on_one_line():
    message = make_message(
        state=pb.MESSAGE_STATE_PROCESSED, reply_id="r1", text="héllo\nworld", sequence=12
    )
    text = cli.message_to_json(message)
    assert "\n" not in text
    data = json.loads(text)
    assert data == {
        "id": ORIGIN_ID,
        "author": "ana",
        "text": "héllo\nworld",
        "sequence": "12",  # int64 is a string in proto3 JSON
        "state": "MESSAGE_STATE_PROCESSED",
        "reply_id": "r1",
    }


def test_render_picks_the_format():
    message = make_message()
    assert cli.render(message, as_json=True) == cli.message_to_json(message)
    assert cli.render(message, as_json=False) == cli.format_message(message)
    assert cli.render(message, as_json=False, detailed=True) == cli.format_message_details(message)


def test_format_error():
    assert (
        cli.format_error(grpc.StatusCode.NOT_FOUND, "message 'x' not found")
        == "error: NOT_FOUND: message 'x' not found"
    )
    assert cli.format_error(None, None) == "error: UNKNOWN: no details"


def test_default_author():
    assert cli.default_author({"USER": "ana"}) == "ana"
    assert cli.default_author({"USER": ""}) == "anonymous"
    assert cli.default_author({}) == "anonymous"


# -- argument parsing -------------------------------------------------------------------------


def parse(argv, env=None):
    return cli.build_parser(env or {}).parse_args(argv)


def test_store_and_json_defaults():
    args = parse(["get", "m1"])
    assert (args.store, args.json) == (cli.DEFAULT_STORE, False)


def test_store_from_environment_and_flag_wins():
    env = {cli.STORE_ENV: "10.0.0.1:7000"}
    assert parse(["list"], env).store == "10.0.0.1:7000"
    assert parse(["list", "--store", "h:1"], env).store == "h:1"


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "h:1", "--json", "list"],
        ["list", "--store", "h:1", "--json"],
        ["--json", "list", "--store", "h:1"],
    ],
)
def test_store_and_json_go_before_or_after_the_command(argv):
    args = parse(argv)
    assert (args.store, args.json) == ("h:1", True)


def test_post_options():
    args = parse(
        ["post", "Hello", "--author", "bo", "--id", ORIGIN_ID, "--create-time-ms", "1761333653306"]
    )
    assert (args.text, args.author, args.id, args.create_time_ms) == (
        "Hello",
        "bo",
        ORIGIN_ID,
        1761333653306,
    )
    assert args.wait is None


def test_post_author_defaults_to_user():
    assert parse(["post", "hi"], {"USER": "ana"}).author == "ana"
    assert parse(["post", "hi"], {}).author == "anonymous"


def test_list_options():
    args = parse(["list", "--state", "dead", "--reply-to", "m1", "--limit", "3"])
    assert (args.state, args.reply_to, args.limit) == ("dead", "m1", 3)
    assert cli.STATES[args.state] == pb.MESSAGE_STATE_DEAD


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["post"],
        ["get"],
        ["list", "--state", "done"],
        ["list", "--limit", "0"],
        ["list", "--limit", "x"],
        ["list", "--store", "no-port"],
        ["post", "hi", "--wait", "0"],
        ["post", "hi", "--create-time-ms", "soon"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_store_address_in_environment_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["list"], {cli.STORE_ENV: "nonsense"})
    assert exit_info.value.code == 2
    assert "--store" in capsys.readouterr().err


def test_main_reports_an_unreachable_store_without_a_traceback(capsys):
    # Port 1 on loopback refuses connections: a real failed call, no store needed.
    code = cli.main(["--store", "127.0.0.1:1", "get", "m1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in err
