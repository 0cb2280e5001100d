"""TLS, mutual TLS and roles, on real store and bot processes with certificates made here.

Two stores: one serves TLS and knows a token per role; the other wants client certificates
from one CA (mutual TLS) and gives roles by certificate identity. Every refusal is checked for
its code and its text (the method named, the token never), and the refused stream for ending
at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ackbot import cli
from ackbot.testing import (
    READY_TIMEOUT,
    Security,
    Service,
    bot_service,
    store_service,
    wait_until,
)
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import GRPCURL, ConsumeSession, create, unique_id, wait_state

TOKENS = {"producer": "prod-7f3a9c1e", "bot": "bot-2b8d4e6f", "admin": "admin-91c5a7d3"}
SERVICE = "/ackbot.v1.MessageStore"
CALL_TIMEOUT = 5.0


@dataclass(frozen=True)
class Pki:
    """The files of one test CA and the certificates it issued, plus another CA's."""

    ca: Path
    server_cert: Path
    server_key: Path
    bot_cert: Path
    bot_key: Path
    ops_cert: Path
    ops_key: Path
    stranger_cert: Path  # from another CA
    stranger_key: Path
    expired_cert: Path  # from our CA, but expired yesterday
    expired_key: Path


def _write(leaf: trustme.LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    now = datetime.datetime.now(datetime.UTC)
    server = _write(ca.issue_cert("localhost", "127.0.0.1"), folder, "server")
    bot = _write(ca.issue_cert("bot.ackbot.test"), folder, "bot")
    ops = _write(ca.issue_cert("ops.ackbot.test"), folder, "ops")
    stranger = _write(other_ca.issue_cert("ops.ackbot.test"), folder, "stranger")
    expired = _write(
        ca.issue_cert(
            "ops.ackbot.test",
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        ),
        folder,
        "expired",
    )
    return Pki(folder / "ca.pem", *server, *bot, *ops, *stranger, *expired)


def _started(service: Service) -> Service:
    try:
        return service.start().wait_ready()
    except BaseException:
        service.cleanup()
        raise


@pytest.fixture(scope="module")
def tls_store(pki, tmp_path_factory):
    """TLS, a token per role."""
    security = Security(ca=pki.ca, cert=pki.server_cert, key=pki.server_key, tokens=TOKENS)
    service = _started(
        store_service(tmp_path_factory.mktemp("tls"), name="tls-store", security=security)
    )
    yield service
    service.cleanup()


@pytest.fixture(scope="module")
def mtls_store(pki, tmp_path_factory):
    """Mutual TLS: certificates of our CA only; bot.ackbot.test is a bot, ops.ackbot.test an
    admin. The harness's health probes present the ops certificate."""
    security = Security(
        ca=pki.ca,
        cert=pki.server_cert,
        key=pki.server_key,
        client_ca=pki.ca,
        client_cert=pki.ops_cert,
        client_key=pki.ops_key,
    )
    service = _started(
        store_service(
            tmp_path_factory.mktemp("mtls"),
            name="mtls-store",
            security=security,
            args=["--cert-roles", "bot.ackbot.test=bot,ops.ackbot.test=admin"],
        )
    )
    yield service
    service.cleanup()


def _tls(pki: Pki, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        pki.ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


async def _list(channel: grpc.aio.Channel) -> pb.ListMessagesResponse:
    stub = pb_grpc.MessageStoreStub(channel)
    return await stub.ListMessages(pb.ListMessagesRequest(page_size=1), timeout=CALL_TIMEOUT)


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _no_token_in(error: grpc.aio.AioRpcError) -> None:
    text = f"{error.details()} {error.debug_error_string()}"
    for token in TOKENS.values():
        assert token not in text


# -- TLS --------------------------------------------------------------------------------------


async def test_a_plaintext_client_cannot_talk_to_a_tls_store(tls_store):
    async with grpc.aio.insecure_channel(tls_store.address) as channel:
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_answers_without_a_token(tls_store):
    async with tls_store.aio_channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_no_token_is_unauthenticated_naming_the_method(tls_store):
    async with tls_store.aio_channel() as channel:
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"{SERVICE}/ListMessages" in error.details()


async def test_a_wrong_token_is_unauthenticated_and_never_echoed(tls_store):
    async with tls_store.aio_channel(token="not-a-token-5e1f") as channel:
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not-a-token-5e1f" not in error.details()
    _no_token_in(error)


async def test_the_bot_token_may_not_requeue(tls_store):
    async with tls_store.aio_channel(token=TOKENS["bot"]) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        error = await _refused(
            stub.RequeueMessage(pb.RequeueMessageRequest(id="x"), timeout=CALL_TIMEOUT)
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"role 'bot' may not call {SERVICE}/RequeueMessage"
    _no_token_in(error)


async def test_the_producer_token_is_refused_the_stream_at_once(tls_store):
    async with tls_store.aio_channel(token=TOKENS["producer"]) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        # A far deadline: a refusal that hung would fail the wait_for, not the deadline.
        call = stub.StreamUnprocessed(pb.StreamUnprocessedRequest(consumer="p"), timeout=60)

        async def first_read() -> object:
            return await call.read()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(first_read(), timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{SERVICE}/StreamUnprocessed" in caught.value.details()


@pytest.mark.parametrize("token", [None, "producer"])
async def test_consume_is_refused_before_its_first_response(tls_store, token):
    async with tls_store.aio_channel(token=TOKENS[token] if token else None) as channel:
        stub = pb_grpc.MessageStoreStub(channel)

        # Nothing is written: the refusal comes before the store reads a request, and a write
        # racing it would end the call on the client's side (INTERNAL, a failed send) before
        # the status is read.
        call = stub.Consume(timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), timeout=CALL_TIMEOUT)
    expected = grpc.StatusCode.PERMISSION_DENIED if token else grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.code() == expected
    assert f"{SERVICE}/Consume" in caught.value.details()
    _no_token_in(caught.value)


async def test_the_bot_token_opens_a_consume_session(tls_store):
    async with tls_store.aio_channel(token=TOKENS["bot"]) as channel:
        session = ConsumeSession(pb_grpc.MessageStoreStub(channel), consumer="b", drain=True)
        try:
            (result,) = await session.settle(
                session.settlement(mark_processed=pb.MarkProcessedRequest(id="nobody"))
            )
            assert result.status.code == grpc.StatusCode.NOT_FOUND.value[0]  # past the role check
            assert await session.half_close() == grpc.StatusCode.OK
        finally:
            await session.close()


async def test_producer_creates_bot_streams_and_settles_admin_requeues(tls_store):
    async with (
        tls_store.aio_channel(token=TOKENS["producer"]) as producer_channel,
        tls_store.aio_channel(token=TOKENS["bot"]) as bot_channel,
        tls_store.aio_channel(token=TOKENS["admin"]) as admin_channel,
    ):
        producer = pb_grpc.MessageStoreStub(producer_channel)
        bot = pb_grpc.MessageStoreStub(bot_channel)
        admin = pb_grpc.MessageStoreStub(admin_channel)
        message = await create(producer, "over TLS", id=unique_id("tls"))

        stream = bot.StreamUnprocessed(
            pb.StreamUnprocessedRequest(consumer="tls-bot", max_in_flight=1), timeout=30
        )
        try:
            async for response in stream:
                ids = [delivery.message.id for delivery in response.deliveries]
                if message.id in ids:
                    break
        finally:
            stream.cancel()
        reply = pb.Message(author="tls-bot", text="answered over TLS")
        marked = await bot.MarkProcessed(
            pb.MarkProcessedRequest(id=message.id, reply=reply), timeout=CALL_TIMEOUT
        )
        assert marked.reply.reply_to == message.id
        got = await producer.GetMessage(pb.GetMessageRequest(id=message.id), timeout=CALL_TIMEOUT)
        assert got.message.state == pb.MESSAGE_STATE_PROCESSED
        # The admin may call RequeueMessage (a PROCESSED message is not DEAD: the store's own
        # answer, past the role check).
        error = await _refused(
            admin.RequeueMessage(pb.RequeueMessageRequest(id=message.id), timeout=CALL_TIMEOUT)
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Every role may read the stats.
        for stub in (producer, bot, admin):
            stats = await stub.GetStats(pb.GetStatsRequest(), timeout=CALL_TIMEOUT)
            assert stats.processed_count >= 2  # the message and its reply


def _grpcurl(pki: Pki, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-cacert", str(pki.ca), "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_reflection_needs_a_token_and_grpcurl_works_with_tls_and_one(tls_store, pki):
    refused = _grpcurl(pki, tls_store.address, "list")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr

    auth = f"authorization: Bearer {TOKENS['producer']}"
    listed = _grpcurl(pki, "-H", auth, tls_store.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "ackbot.v1.MessageStore" in listed.stdout.split()

    request = json.dumps({"message": {"author": "grpcurl", "text": "Hello over TLS"}})
    created = _grpcurl(
        pki, "-H", auth, "-d", request, tls_store.address, "ackbot.v1.MessageStore/CreateMessage"
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["message"]["state"] == "MESSAGE_STATE_PENDING"

    # grpcurl learns Health's schema by reflection, so it sends the token; the check itself is
    # open (test_health_answers_without_a_token).
    health = _grpcurl(pki, "-H", auth, tls_store.address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_the_cli_with_tls_and_a_token(tls_store, pki, tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["producer"] + "\n")
    common = ["--store", tls_store.address, "--tls-ca", str(pki.ca)]
    assert cli.main([*common, "--token-file", str(token_file), "post", "via the CLI"]) == 0
    assert "via the CLI" in capsys.readouterr().out

    monkeypatch.setenv("ACKBOT_TOKEN", TOKENS["bot"])
    assert cli.main([*common, "requeue", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: PERMISSION_DENIED: role 'bot' may not call {SERVICE}/")
    assert TOKENS["bot"] not in err


async def test_a_real_bot_answers_over_tls_with_its_token(tls_store, tmp_path):
    security = tls_store.security
    bot = bot_service(tmp_path, tls_store.address, persona="tlsbot", store_security=security)
    try:
        await bot.astart()
        async with tls_store.aio_channel(token=TOKENS["producer"]) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            message = await create(stub, "Hello", id=unique_id("e2e"))
            done = await wait_state(stub, message.id, pb.MESSAGE_STATE_PROCESSED, within=15)
            reply = await stub.GetMessage(pb.GetMessageRequest(id=done.reply_id), timeout=5)
        assert reply.message.author == "tlsbot"
    finally:
        bot.cleanup()
    assert TOKENS["bot"] not in bot.log_text()
    assert all(token not in tls_store.log_text() for token in TOKENS.values())


# -- mutual TLS -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client",
    [
        pytest.param(None, id="no-client-certificate"),
        pytest.param("stranger", id="certificate-of-another-ca"),
        pytest.param("expired", id="expired-certificate"),
    ],
)
async def test_mutual_tls_refuses_clients_without_a_good_certificate(mtls_store, pki, client):
    cert = getattr(pki, f"{client}_cert") if client else None
    key = getattr(pki, f"{client}_key") if client else None
    async with grpc.aio.secure_channel(mtls_store.address, _tls(pki, cert, key)) as channel:
        error = await _refused(_list(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_gives_roles_by_certificate_identity(mtls_store, pki):
    bot_credentials = _tls(pki, pki.bot_cert, pki.bot_key)
    async with grpc.aio.secure_channel(mtls_store.address, bot_credentials) as channel:
        assert isinstance(await _list(channel), pb.ListMessagesResponse)
        stub = pb_grpc.MessageStoreStub(channel)
        error = await _refused(
            stub.RequeueMessage(pb.RequeueMessageRequest(id="x"), timeout=CALL_TIMEOUT)
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "role 'bot'" in error.details()
    ops_credentials = _tls(pki, pki.ops_cert, pki.ops_key)
    async with grpc.aio.secure_channel(mtls_store.address, ops_credentials) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        error = await _refused(
            stub.RequeueMessage(pb.RequeueMessageRequest(id="x"), timeout=CALL_TIMEOUT)
        )
    assert error.code() == grpc.StatusCode.NOT_FOUND  # past the role check


# -- safe by default --------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["ackbot.store", "ackbot.bot"])
def test_a_non_loopback_listen_without_tls_is_refused_unless_allowed(program, tmp_path):
    argv = [sys.executable, "-m", program, "--listen", "0.0.0.0:0"]
    if program == "ackbot.store":
        argv += ["--db", f"sqlite+aiosqlite:///{tmp_path / 'open.db'}"]
    refused = subprocess.run(
        argv, capture_output=True, text=True, timeout=READY_TIMEOUT, cwd=tmp_path, check=False
    )
    assert refused.returncode == 1, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert "refusing to listen on 0.0.0.0:0" in lines[0]
    assert "--allow-insecure-listen" in lines[0]
    assert not (tmp_path / "open.db").exists()  # refused before the database was touched


def test_the_allow_flag_lets_a_store_listen_beyond_loopback(tmp_path):
    service = store_service(tmp_path, args=["--listen", "0.0.0.0:0", "--allow-insecure-listen"])
    try:
        service.start().wait_ready()
        assert service.is_serving()
    finally:
        service.cleanup()


async def test_tokens_on_loopback_without_tls_and_the_bots_reflection_takes_its_token(tmp_path):
    """Tokens without TLS work on loopback (gRPC's local credentials); the bot's own server
    answers health openly and reflection only with the bot's token."""
    tokens = {f"ACKBOT_STORE_{role.upper()}_TOKEN": token for role, token in TOKENS.items()}
    store = store_service(tmp_path, name="plain-store", env=tokens)
    services = [store]
    try:
        await store.astart()
        bot = bot_service(
            tmp_path, store.address, persona="plainbot", env={"ACKBOT_BOT_TOKEN": TOKENS["bot"]}
        )
        services.append(bot)
        await bot.astart()  # SERVING: its stream to the store is up, by its token
        async with store.aio_channel(token=TOKENS["producer"]) as channel:
            stub = pb_grpc.MessageStoreStub(channel)
            message = await create(stub, "Hello", id=unique_id("plain"))
            await wait_state(stub, message.id, pb.MESSAGE_STATE_PROCESSED, within=15)

        def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
            argv = [str(GRPCURL), "-plaintext", "-max-time", "10", *args, bot.address, "list"]
            return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

        refused = await asyncio.to_thread(grpcurl)
        assert refused.returncode != 0
        assert "Unauthenticated" in refused.stderr
        listed = await asyncio.to_thread(grpcurl, "-H", f"authorization: Bearer {TOKENS['bot']}")
        assert listed.returncode == 0, listed.stderr
        assert "grpc.health.v1.Health" in listed.stdout.split()
    finally:
        for service in reversed(services):
            service.cleanup()


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path):
    """The store re-reads its certificate files when they change: new connections get the new
    certificate (here from another CA, so the change shows), without a restart."""
    first_ca, second_ca = trustme.CA(), trustme.CA()
    for name, ca in (("first", first_ca), ("second", second_ca)):
        ca.cert_pem.write_to_path(str(tmp_path / f"{name}-ca.pem"))
    live = tmp_path / "live"
    live.mkdir()
    cert, key = _write(first_ca.issue_cert("localhost", "127.0.0.1"), live, "server")
    security = Security(ca=tmp_path / "first-ca.pem", cert=cert, key=key, tokens=TOKENS)
    store = store_service(tmp_path, name="rotating-store", security=security)
    try:
        await store.astart()

        async def serving_for(ca_name: str) -> bool:
            credentials = grpc.ssl_channel_credentials(
                (tmp_path / f"{ca_name}-ca.pem").read_bytes()
            )
            async with grpc.aio.secure_channel(store.address, credentials) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.aio.AioRpcError:
                    return False
            return True

        assert await serving_for("first")
        # Renewed the way an operator would: new files written aside, moved over the old ones.
        # Between the two moves the key does not match the certificate: the old pair stays.
        staged = tmp_path / "staged"
        staged.mkdir()
        new_cert, new_key = _write(second_ca.issue_cert("localhost", "127.0.0.1"), staged, "s")
        os.replace(new_key, key)
        assert await serving_for("first")
        os.replace(new_cert, cert)
        await wait_until(lambda: serving_for("second"), within=10, what="the new certificate")
        assert not await serving_for("first")
        assert "TLS files changed but cannot be used yet" in store.log_text()
        assert "TLS files changed: new connections use the new certificate" in store.log_text()
        assert store.proc is not None
        assert store.proc.poll() is None  # the same process all along
    finally:
        store.cleanup()
