"""`--log-format json`: a real store writes one JSON object per line, and the line about a
create carries the message id as a field of its own."""

from __future__ import annotations

import json

from ackbot.testing import wait_until
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import create


async def test_store_logs_json_lines_with_the_message_id(start_store):
    store = start_store(args=["--log-format", "json"])
    async with store.aio_channel() as channel:
        message = await create(pb_grpc.MessageStoreStub(channel), "hello json")

    def created_entry() -> dict | None:
        for entry in entries():
            if entry["message"].startswith("created ") and entry.get("message_id") == message.id:
                return entry
        return None

    def entries() -> list[dict]:
        lines = [line for line in store.log_text().splitlines() if line.strip()]
        return [json.loads(line) for line in lines]  # every line parses

    entry = await wait_until(created_entry, 10, what="the create's JSON line")
    assert {"time", "level", "logger", "message"} <= entry.keys()
    assert entry["level"] == "DEBUG"  # a routine step of one message
    assert entry["logger"] == "ackbot.store.manager"
    assert entry["sequence"] == str(message.sequence)
    # The text of the message never goes into the log, even at DEBUG.
    assert "hello json" not in store.log_text()
    listening = [e for e in entries() if e["message"].startswith("listening on ")]
    assert len(listening) == 1


def test_text_stays_the_default(store):
    first = store.log_text().splitlines()[0]
    assert not first.startswith("{")


async def test_bot_logs_json_lines_with_the_message_id(store, stub, start_bot):
    bot = await start_bot(args=["--log-format", "json"])
    message = await create(stub, "a question")

    def answered() -> dict | None:
        for line in bot.log_text().splitlines():
            entry = json.loads(line)
            if entry["message"].startswith("answered ") and entry.get("message_id") == message.id:
                return entry
        return None

    entry = await wait_until(answered, 20, what="the bot's JSON line about its answer")
    assert entry["attempt"] == "1"
    assert entry["reply_id"]
    assert entry["logger"].startswith("ackbot.bot")
