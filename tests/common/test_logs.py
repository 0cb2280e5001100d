"""The JSON log formatter: one object per line, the `key=value` fields of the line lifted out."""

from __future__ import annotations

import json
import logging
import sys

from ackbot.common.logs import JsonFormatter


def record(message: str, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "ackbot.store.manager", logging.INFO, __file__, 1, message, args, exc_info
    )


def test_a_line_about_a_message_carries_its_fields():
    line = JsonFormatter().format(
        record("delivered message_id=%s attempt=%d consumer=%s", "m-1", 2, "bot-a")
    )
    entry = json.loads(line)
    assert entry["message"] == "delivered message_id=m-1 attempt=2 consumer=bot-a"
    assert entry["message_id"] == "m-1"
    assert entry["attempt"] == "2"
    assert entry["consumer"] == "bot-a"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "ackbot.store.manager"
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_a_plain_line_has_only_the_base_fields_and_a_traceback_when_there_is_one():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record("stream reader failed", exc_info=exc_info)))
    assert set(entry) == {"time", "level", "logger", "message", "exception"}
    assert "ValueError: boom" in entry["exception"]


def test_a_key_inside_another_word_is_not_a_field():
    entry = json.loads(JsonFormatter().format(record("old_message_id=x not.store=y")))
    assert "message_id" not in entry
    assert "store" not in entry
