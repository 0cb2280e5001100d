"""ackbot-web reaches a store that serves TLS and wants tokens, with the producer role's token,
like any producer; without a token the store refuses it, and it is not ready."""

from __future__ import annotations

import asyncio

import pytest
import trustme

from ackbot.testing import Security, ServiceError, store_service, wait_until
from ackbot.testing.web import web_service

from .conftest import Failed, call

TOKENS = {"producer": "prod-5e1b7c2a", "bot": "bot-8a4f0d93", "admin": "admin-3c9e6b15"}


async def test_the_front_door_uses_tls_and_the_producer_token(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    security = Security(
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "server.pem",
        key=tmp_path / "server.key",
        tokens=TOKENS,
    )
    store = store_service(tmp_path, security=security)
    await store.astart()
    services = [store]
    try:
        tls = ("--store-ca", str(tmp_path / "ca.pem"))
        web = web_service(
            tmp_path, store.address, *tls, env={"ACKBOT_WEB_STORE_TOKEN": TOKENS["producer"]}
        )
        services.append(web)
        await web.astart()
        posted = await call(
            web.url, "PostComment", {"thread": "tls", "author": "ana", "text": "Hello"}
        )
        listed = await call(web.url, "ListThread", {"thread": "tls"})
        assert [c["id"] for c in listed["comments"]] == [posted["comment"]["id"]]

        # Without the token: the store refuses its watch, so it never says it serves.
        tokenless = web_service(tmp_path, store.address, *tls, name="web-tokenless")
        services.append(tokenless)
        tokenless.start()
        await wait_until(
            lambda: (
                "store watch ended: UNAUTHENTICATED" in tokenless.log_text()
                and "listening on" in tokenless.log_text()
            ),
            20,
            what="the tokenless front door listening, and the store refusing its watch",
        )
        # It listens, and its /healthz says it does not serve.
        with pytest.raises(ServiceError, match="web-tokenless health SERVING"):
            await asyncio.to_thread(tokenless.wait_ready, 3.0)
    finally:
        for service in reversed(services):
            service.cleanup()


async def test_own_delete_takes_the_admin_token_and_only_it(tmp_path):
    """DeleteMessage is the store's admin role's: with the producer token alone the front door
    refuses own deletes (saying the site does not offer it, and telling its operator which flag
    to give); with --store-admin-token-file they work."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    security = Security(
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "server.pem",
        key=tmp_path / "server.key",
        tokens=TOKENS,
    )
    store = store_service(tmp_path, security=security)
    await store.astart()
    services = [store]
    try:
        tls = ("--store-ca", str(tmp_path / "ca.pem"))
        producer = {"ACKBOT_WEB_STORE_TOKEN": TOKENS["producer"]}
        plain = web_service(tmp_path, store.address, *tls, env=producer, name="web-producer")
        services.append(plain)
        await plain.astart()
        posted = await call(
            plain.url, "PostComment", {"thread": "roles", "author": "ana", "text": "Hello"}
        )
        body = {"id": posted["comment"]["id"], "editKey": posted["editKey"]}
        with pytest.raises(Failed) as refused:
            await call(plain.url, "DeleteComment", body)
        assert refused.value.code == "failed_precondition"
        assert refused.value.message == "deleting comments is not enabled on this site"
        assert "--store-admin-token-file" in plain.log_text()

        admin_token = tmp_path / "admin-token"
        admin_token.write_text(TOKENS["admin"] + "\n")
        secret = tmp_path / "secret"
        secret.write_text("s" * 40)
        admin = web_service(
            tmp_path,
            store.address,
            *tls,
            "--store-admin-token-file",
            str(admin_token),
            "--edit-secret-file",
            str(secret),
            env=producer,
            name="web-admin",
        )
        services.append(admin)
        await admin.astart()
        posted = await call(
            admin.url, "PostComment", {"thread": "roles", "author": "ana", "text": "Again"}
        )
        await call(
            admin.url,
            "DeleteComment",
            {"id": posted["comment"]["id"], "editKey": posted["editKey"]},
        )
        listed = await call(admin.url, "ListThread", {"thread": "roles"})
        assert [c["text"] for c in listed["comments"]] == ["Hello"]
    finally:
        for service in reversed(services):
            service.cleanup()
