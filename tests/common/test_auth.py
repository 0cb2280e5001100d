"""The role table and the decision, without a server; the listen check and the TLS flags."""

from __future__ import annotations

import grpc
import pytest

from ackbot.common.auth import (
    METHOD_ROLES,
    Authenticator,
    Role,
    parse_cert_roles,
    read_token,
    roles_for,
)
from ackbot.common.serving import InsecureListen, check_listen, is_loopback
from ackbot.v1 import message_store_pb2 as pb

TOKENS = {Role.PRODUCER: "p-token", Role.BOT: "b-token", Role.ADMIN: "a-token"}
AUTH = Authenticator(TOKENS, {"bot.example": Role.BOT})
S = "/ackbot.v1.MessageStore"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_every_rpc_of_the_service_has_a_row():
    methods = pb.DESCRIPTOR.services_by_name["MessageStore"].methods
    assert {f"{S}/{m.name}" for m in methods} == set(METHOD_ROLES)


@pytest.mark.parametrize(
    ("method", "roles"),
    [
        ("CreateMessage", {"producer", "admin"}),
        ("BatchCreateMessages", {"producer", "admin"}),
        ("GetMessage", {"producer", "bot", "admin"}),
        ("ListMessages", {"producer", "bot", "admin"}),
        ("StreamUnprocessed", {"bot", "admin"}),
        ("Consume", {"bot", "admin"}),
        ("MarkProcessed", {"bot", "admin"}),
        ("ReleaseMessage", {"bot", "admin"}),
        ("ExtendLease", {"bot", "admin"}),
        ("RequeueMessage", {"admin"}),
        ("DeleteMessage", {"admin"}),
        ("EraseAuthor", {"admin"}),
        ("ApproveMessage", {"admin"}),
        ("PurgeMessages", {"admin"}),
    ],
)
def test_the_role_table(method, roles):
    allowed = roles_for(f"{S}/{method}")
    assert allowed is not None
    assert {role.value for role in allowed} == roles
    for role in Role:
        refusal = AUTH.decide(f"{S}/{method}", bearer(TOKENS[role]), {})
        assert (refusal is None) == (role.value in roles), (method, role)


def test_health_is_open_reflection_needs_any_role_and_unknown_methods_need_admin():
    assert roles_for("/grpc.health.v1.Health/Check") is None
    assert AUTH.decide("/grpc.health.v1.Health/Watch", None, {}) is None
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert AUTH.decide(reflection, None, {})[0] == grpc.StatusCode.UNAUTHENTICATED
    assert AUTH.decide(reflection, bearer("p-token"), {}) is None
    assert roles_for("/other.Service/Method") == frozenset({Role.ADMIN})


def test_refusals_name_the_method_never_the_token():
    code, details = AUTH.decide(f"{S}/CreateMessage", None, {})
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"{S}/CreateMessage" in details
    code, details = AUTH.decide(f"{S}/CreateMessage", bearer("guess-123"), {})
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "guess-123" not in details
    code, details = AUTH.decide(f"{S}/CreateMessage", [("authorization", "Basic abc")], {})
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "abc" not in details
    code, details = AUTH.decide(f"{S}/RequeueMessage", bearer("b-token"), {})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"role 'bot' may not call {S}/RequeueMessage"
    assert all(token not in repr(AUTH) for token in TOKENS.values())


def test_a_certificate_identity_gives_its_role_by_san_or_cn():
    san = {"x509_subject_alternative_name": [b"other", b"bot.example"]}
    assert AUTH.decide(f"{S}/StreamUnprocessed", None, san) is None
    cn = {"x509_common_name": [b"bot.example"]}
    assert AUTH.decide(f"{S}/MarkProcessed", None, cn) is None
    code, _ = AUTH.decide(f"{S}/RequeueMessage", None, san)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = AUTH.decide(f"{S}/ListMessages", None, {"x509_common_name": [b"nobody"]})
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # A token, when sent, decides: a wrong one is not rescued by the certificate.
    code, _ = AUTH.decide(f"{S}/ListMessages", bearer("wrong"), san)
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_parse_cert_roles():
    assert parse_cert_roles(" a.example=bot, CN with spaces = Admin ,") == {
        "a.example": Role.BOT,
        "CN with spaces": Role.ADMIN,
    }
    for bad in ("a.example", "=bot", "a=root"):
        with pytest.raises(ValueError, match="a" if bad != "=bot" else "IDENTITY"):
            parse_cert_roles(bad)


def test_no_tokens_and_no_identities_means_no_authentication():
    assert not Authenticator({}).enabled
    assert Authenticator({Role.BOT: "x"}).enabled


def test_read_token_strips_and_names_the_flag(tmp_path):
    path = tmp_path / "t"
    path.write_text("  s3cret\n")
    assert read_token(str(path), "--token-file") == "s3cret"
    path.write_text("\n")
    with pytest.raises(OSError, match=r"--token-file: .* holds no token"):
        read_token(str(path), "--token-file")
    with pytest.raises(OSError, match="--token-file: cannot read"):
        read_token(str(tmp_path / "missing"), "--token-file")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("store.internal", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_check_listen():
    check_listen("127.0.0.1:0", tls=False, authenticated=False, allow_flag="--x", allowed=False)
    check_listen("0.0.0.0:1", tls=True, authenticated=True, allow_flag="--x", allowed=False)
    check_listen("0.0.0.0:1", tls=False, authenticated=False, allow_flag="--x", allowed=True)
    with pytest.raises(InsecureListen, match=r"0\.0\.0\.0:1 without authentication.*pass --x"):
        check_listen("0.0.0.0:1", tls=True, authenticated=False, allow_flag="--x", allowed=False)
    with pytest.raises(InsecureListen, match=r"without TLS \(--tls-cert/--tls-key\) and auth"):
        check_listen("[::]:1", tls=False, authenticated=False, allow_flag="--x", allowed=False)
