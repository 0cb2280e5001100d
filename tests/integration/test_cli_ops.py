"""The operator commands of `ackbot` against a real store, run as a subprocess: --version
(on the services too),
`post -` from standard input, `dead`, and `requeue --all-dead` with its confirmation."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import pty
import subprocess
import sys

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, child_env
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import StreamReader, create, get

CLI_TIMEOUT = 30
DEAD_IDS = ("dead-1", "dead-2", "dead-3")


def ackbot_sync(*args: str, stdin: str | None = None, stdin_fd: int | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ackbot.cli", *args],
        input=stdin,
        stdin=stdin_fd
        if stdin_fd is not None
        else (None if stdin is not None else subprocess.DEVNULL),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=child_env(),
        check=False,
    )


async def ackbot(*args: str, stdin: str | None = None, stdin_fd: int | None = None):
    return await asyncio.to_thread(ackbot_sync, *args, stdin=stdin, stdin_fd=stdin_fd)


@pytest.fixture
async def dead_store(start_store):
    """A store holding three DEAD messages (one attempt allowed, released with a reason) and
    one PENDING."""
    store = await start_store.started(args=["--max-attempts", "1"])
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        for message_id in DEAD_IDS:
            await create(stub, f"poison {message_id}", id=message_id)
        reader = StreamReader(stub, consumer="failing", max_in_flight=len(DEAD_IDS))
        try:
            for delivery in await reader.take(len(DEAD_IDS)):
                await stub.ReleaseMessage(
                    pb.ReleaseMessageRequest(
                        id=delivery.message.id,
                        lease_token=delivery.lease_token,
                        reason=f"boom on {delivery.message.id}",
                    ),
                    timeout=RPC_TIMEOUT,
                )
        finally:
            await reader.close()
        for message_id in DEAD_IDS:
            assert (await get(stub, message_id)).state == pb.MESSAGE_STATE_DEAD
        await create(stub, "fine", id="alive")
        yield store, stub


async def test_version_on_the_command_and_on_every_subcommand():
    expected = f"ackbot {importlib.metadata.version('ackbot')}"
    for args in (
        ["--version"],
        ["post", "--version"],
        ["dead", "--version"],
        ["requeue", "--version"],
    ):
        result = await ackbot(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


@pytest.mark.parametrize("module", ["ackbot.store", "ackbot.bot"])
def test_version_on_the_services(module):
    """`ackbot-store --version` and `ackbot-bot --version` answer before anything starts."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ackbot {importlib.metadata.version('ackbot')}"


def test_bash_completion_offers_the_commands_and_their_flags(tmp_path):
    """The script `ackbot completion bash` prints, sourced in a real bash, completes a command
    and a subcommand's flag."""
    script = ackbot_sync("completion", "bash")
    assert script.returncode == 0, script.stderr
    path = tmp_path / "ackbot.bash"
    path.write_text(script.stdout)
    probe = (
        f"source {path}\n"
        "COMP_WORDS=(ackbot re); COMP_CWORD=1; _shtab_ackbot ackbot re ackbot\n"
        'echo "${COMPREPLY[*]}"\n'
        "COMP_WORDS=(ackbot requeue --all); COMP_CWORD=2; _shtab_ackbot ackbot --all requeue\n"
        'echo "${COMPREPLY[*]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["requeue", "--all-dead"]


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_completion_scripts_for_the_other_shells_name_every_command(shell):
    script = ackbot_sync("completion", shell)
    assert script.returncode == 0, script.stderr
    for command in ("post", "get", "list", "tail", "dead", "requeue", "completion"):
        assert command in script.stdout


async def test_post_dash_reads_the_text_from_standard_input(store, stub):
    text = "line one\nline two\twith a tab"
    result = await ackbot(
        "post", "-", "--store", store.address, "--json", "--id", "from-stdin", stdin=text + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] == text  # the one final newline dropped
    assert (await get(stub, "from-stdin")).text == text


async def test_dead_lists_every_dead_message_with_its_last_error(dead_store):
    store, _ = dead_store
    result = await ackbot("dead", "--store", store.address)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(DEAD_IDS)
    for line, message_id in zip(lines, DEAD_IDS, strict=True):
        assert "DEAD" in line
        assert f"last error: boom on {message_id}" in line

    as_json = await ackbot("dead", "--store", store.address, "--json")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["id"], r["last_error"]) for r in rows] == [(i, f"boom on {i}") for i in DEAD_IDS]


async def test_requeue_all_dead_needs_yes_without_a_terminal(dead_store):
    store, stub = dead_store
    refused = await ackbot("requeue", "--all-dead", "--store", store.address)
    assert refused.returncode == 2
    assert "add --yes" in refused.stderr
    assert "would requeue 3 messages" in refused.stderr
    for message_id in DEAD_IDS:  # nothing changed
        assert (await get(stub, message_id)).state == pb.MESSAGE_STATE_DEAD

    done = await ackbot("requeue", "--all-dead", "--yes", "--store", store.address)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(DEAD_IDS)
    for message_id in DEAD_IDS:
        assert (await get(stub, message_id)).state == pb.MESSAGE_STATE_PENDING
    assert (await get(stub, "alive")).state == pb.MESSAGE_STATE_PENDING

    again = await ackbot("requeue", "--all-dead", "--yes", "--store", store.address)
    assert again.returncode == 0
    assert "no DEAD messages" in again.stderr


@pytest.mark.parametrize(
    ("answer", "code", "state"),
    [("y\n", 0, pb.MESSAGE_STATE_PENDING), ("n\n", 1, pb.MESSAGE_STATE_DEAD)],
)
async def test_requeue_all_dead_asks_on_a_terminal(dead_store, answer, code, state):
    store, stub = dead_store
    # A pseudo-terminal as standard input: what an operator at a shell has.
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        result = await ackbot("requeue", "--all-dead", "--store", store.address, stdin_fd=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == code, result.stderr
    assert "Requeue 3 DEAD messages? [y/N]" in result.stderr
    for message_id in DEAD_IDS:
        assert (await get(stub, message_id)).state == state


async def test_stats_shows_counts_the_oldest_pending_and_the_open_streams(dead_store):
    store, stub = dead_store
    reader = StreamReader(stub, consumer="stats-bot", max_in_flight=1, lease_seconds=60)
    try:
        await reader.wait_open()
        leased = await reader.next()  # "alive", the only deliverable message
        assert leased.message.id == "alive"
        await create(stub, "waiting", id="waiting")  # the stream has no room: stays PENDING

        result = await ackbot("stats", "--store", store.address, "--json")
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        # int64 fields are strings in proto JSON.
        assert (stats["pending_count"], stats["leased_count"]) == ("1", "1")
        assert (stats["processed_count"], stats["dead_count"]) == ("0", str(len(DEAD_IDS)))
        assert stats["oldest_pending_age"].endswith("s")
        [stream] = stats["streams"]
        assert stream == {
            "consumer": "stats-bot",
            "max_in_flight": 1,
            "in_flight": 1,
            "lease_duration": "60s",
        }
        assert stats["store_id"]

        text = await ackbot("stats", "--store", store.address)
        assert text.returncode == 0, text.stderr
        fields = dict(line.split(None, 1) for line in text.stdout.splitlines()[:5])
        assert fields == {
            "store": stats["store_id"],
            "pending": "1",
            "leased": "1",
            "processed": "0",
            "dead": str(len(DEAD_IDS)),
        }
        assert "stats-bot  in flight 1/1  lease 60 s" in text.stdout
    finally:
        await reader.close()
