"""The `ackbot` command line against a real store and bot, run as a subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from ackbot.testing import child_env
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import get, wait_state

CLI_TIMEOUT = 30


async def ackbot(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs `python -m ackbot.cli ARGS` (what the `ackbot` script runs) off the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ackbot.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=child_env(),
        check=False,
    )


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_post_then_get_with_json(store, stub):
    posted = json_lines(
        await ackbot(
            "post",
            "Hello",
            "--store",
            store.address,
            "--json",
            "--author",
            "ana",
            "--id",
            "1761333653305-h0jgid21p",
            "--create-time-ms",
            "1761333653306",
        )
    )
    assert len(posted) == 1
    message = posted[0]
    assert message["id"] == "1761333653305-h0jgid21p"
    assert message["text"] == "Hello"
    assert message["author"] == "ana"
    assert message["state"] == "MESSAGE_STATE_PENDING"

    got = json_lines(await ackbot("get", message["id"], "--store", store.address, "--json"))
    assert len(got) == 1
    assert got[0]["id"] == message["id"]
    assert got[0]["text"] == "Hello"
    assert got[0]["create_time"] == "2025-10-24T19:20:53.306Z"
    stored = await get(stub, message["id"])
    assert stored.create_time.ToMilliseconds() == 1761333653306

    # Posting again is a harmless retry.
    again = json_lines(
        await ackbot(
            "post",
            "Hello",
            "--store",
            store.address,
            "--json",
            "--author",
            "ana",
            "--id",
            message["id"],
        )
    )
    assert again[0]["sequence"] == message["sequence"]


async def test_post_with_a_bot_running_gets_a_reply(store, stub, start_bot):
    await start_bot(persona="ackbot")
    posted = json_lines(await ackbot("post", "Hello", "--store", store.address, "--json"))
    message_id = posted[0]["id"]
    assert message_id, "the store assigned an id"

    processed = await wait_state(stub, message_id, pb.MESSAGE_STATE_PROCESSED, within=20)
    got = json_lines(await ackbot("get", message_id, "--store", store.address, "--json"))[0]
    assert got["state"] == "MESSAGE_STATE_PROCESSED"
    assert got["reply_id"] == processed.reply_id

    reply = json_lines(await ackbot("get", got["reply_id"], "--store", store.address, "--json"))
    assert reply[0]["reply_to"] == message_id
    assert reply[0]["author"] == "ackbot"
    assert reply[0]["text"]

    replies = json_lines(
        await ackbot("list", "--reply-to", message_id, "--store", store.address, "--json")
    )
    assert [r["id"] for r in replies] == [got["reply_id"]]

    # `post --wait` prints the message, then the reply once the bot has answered.
    waited = json_lines(
        await ackbot("post", "Hi again", "--store", store.address, "--json", "--wait", "20")
    )
    assert len(waited) == 2
    assert waited[1]["reply_to"] == waited[0]["id"]


async def test_errors_exit_1_with_the_status_code(store):
    result = await ackbot("get", "no-such-id", "--store", store.address)
    assert result.returncode == 1
    assert result.stderr.startswith("error: NOT_FOUND:")
    assert "no-such-id" in result.stderr
    assert "Traceback" not in result.stderr

    result = await ackbot("post", "", "--store", store.address)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
