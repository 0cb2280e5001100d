"""Logging setup, called once from each entry point (never at import time).

Two formats: text (the default, for people) and JSON (`--log-format json`, for log pipelines):
one object per line with time, level, logger and message, plus the fields that the line names
as `key=value` (message_id, consumer, store, ...). Those fields are parsed from the rendered
message rather than bound through a contextvar: every line about a message already ends with
`message_id=...` (a rule of the code base), so the text and the JSON always agree, and no call
site needs to change. The formatter is the standard library's; no dependency needed for this.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The `key=value` pairs our lines carry that are worth a field of their own; values end at
# white space (ids, consumers and store ids never contain any).
FIELDS = ("message_id", "reply_id", "consumer", "store", "attempt", "sequence", "state")
_FIELD = re.compile(r"(?<![\w.])(" + "|".join(FIELDS) + r")=([^\s,;()]+)")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    `key=value` fields found in the message, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in _FIELD.findall(message):
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # grpc's own asyncio layer logs every cancelled handler at ERROR; they are expected here
    # (a bot that goes away cancels its stream), and ours log what matters.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
    # aiosqlite logs every operation at DEBUG; our own DEBUG lines are the useful ones.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
