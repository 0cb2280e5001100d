"""Who may call what: roles, the method -> role table, and the server interceptor that enforces it.

A caller is identified by a bearer token (`authorization: Bearer TOKEN`, one token per role,
compared in constant time) or, without a token, by its verified client certificate (a SAN or the
CN mapped to a role by --cert-roles). Health stays open, so probes need nothing; reflection needs
any role; every other method needs one of the roles in `METHOD_ROLES` (an unknown one: admin).

The check runs inside the method handler, not in `intercept_service` itself: an aio interceptor
sees only the method name and the metadata, never the TLS peer (grpc#18459), while a handler has
`context.auth_context()`. So the interceptor wraps each guarded handler with one of the same kind
(unary or streaming), whose first act is the check; a refused streaming call then ends with its
status like a refused unary one, instead of the unary abort handler of grpc's example, which a
streaming client cannot read. Refusals name the method and the role, never the token.
"""

from __future__ import annotations

import enum
import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

SERVICE = "ackbot.v1.MessageStore"
AUTHORIZATION = "authorization"
BEARER = "bearer "


class Role(enum.Enum):
    PRODUCER = "producer"
    BOT = "bot"
    ADMIN = "admin"


ROLE_NAMES = tuple(role.value for role in Role)
_ALL = frozenset(Role)
_READERS = frozenset({Role.PRODUCER, Role.BOT, Role.ADMIN})

METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    f"/{SERVICE}/CreateMessage": frozenset({Role.PRODUCER, Role.ADMIN}),
    f"/{SERVICE}/BatchCreateMessages": frozenset({Role.PRODUCER, Role.ADMIN}),
    f"/{SERVICE}/GetMessage": _READERS,
    f"/{SERVICE}/ListMessages": _READERS,
    f"/{SERVICE}/StreamUnprocessed": frozenset({Role.BOT, Role.ADMIN}),
    f"/{SERVICE}/Consume": frozenset({Role.BOT, Role.ADMIN}),
    f"/{SERVICE}/MarkProcessed": frozenset({Role.BOT, Role.ADMIN}),
    f"/{SERVICE}/ReleaseMessage": frozenset({Role.BOT, Role.ADMIN}),
    f"/{SERVICE}/ExtendLease": frozenset({Role.BOT, Role.ADMIN}),
    f"/{SERVICE}/RequeueMessage": frozenset({Role.ADMIN}),
    # Moderation and erasure (issue 19).
    f"/{SERVICE}/DeleteMessage": frozenset({Role.ADMIN}),
    f"/{SERVICE}/EraseAuthor": frozenset({Role.ADMIN}),
    f"/{SERVICE}/ApproveMessage": frozenset({Role.ADMIN}),
    f"/{SERVICE}/PurgeMessages": frozenset({Role.ADMIN}),
    f"/{SERVICE}/GetStats": _READERS,
    f"/{SERVICE}/WatchMessages": _READERS,
}
# Probes (orchestrators, `make run`, the harness) carry no credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
# Reflection describes the API, nothing stored: any role may read it.
ANY_ROLE_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
# What a method outside the table needs: the safe answer for something nobody planned for.
DEFAULT_ROLES = frozenset({Role.ADMIN})


def roles_for(method: str) -> frozenset[Role] | None:
    """The roles that may call `method`; None when it is open to everybody."""
    if method.startswith(OPEN_PREFIXES):
        return None
    if method.startswith(ANY_ROLE_PREFIXES):
        return _ALL
    return METHOD_ROLES.get(method, DEFAULT_ROLES)


def parse_cert_roles(text: str) -> dict[str, Role]:
    """IDENTITY=ROLE[,IDENTITY=ROLE...] -> {identity: role}; ValueError naming the bad entry."""
    mapping: dict[str, Role] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        identity, sep, role = entry.rpartition("=")
        identity, role = identity.strip(), role.strip().lower()
        if not sep or not identity:
            raise ValueError(f"expected IDENTITY=ROLE, got {entry!r}")
        if role not in ROLE_NAMES:
            raise ValueError(f"unknown role {role!r} in {entry!r} (one of {', '.join(ROLE_NAMES)})")
        mapping[identity] = Role(role)
    return mapping


class Authenticator:
    """Decides a caller's role from its token or its certificate. Holds the tokens; its repr
    does not show them."""

    def __init__(
        self, tokens: Mapping[Role, str], cert_roles: Mapping[str, Role] | None = None
    ) -> None:
        self._tokens = [(role, token.encode()) for role, token in tokens.items() if token]
        self._cert_roles = dict(cert_roles or {})

    def __repr__(self) -> str:
        roles = ", ".join(role.value for role, _ in self._tokens)
        identities = len(self._cert_roles)
        return f"auth: token roles {roles or 'none'}, {identities} certificate identities"

    @property
    def enabled(self) -> bool:
        return bool(self._tokens or self._cert_roles)

    def role_of_token(self, presented: str) -> Role | None:
        """Every role's token is compared, so the time taken says nothing about which matched."""
        presented_bytes = presented.encode()
        found: Role | None = None
        for role, token in self._tokens:
            if hmac.compare_digest(presented_bytes, token):
                found = role
        return found

    def role_of_certificate(self, auth_context: Mapping[str, Iterable[bytes]]) -> Role | None:
        """The role of the first SAN, then the CN, of a verified client certificate."""
        for key in ("x509_subject_alternative_name", "x509_common_name"):
            for value in auth_context.get(key, ()):
                role = self._cert_roles.get(value.decode(errors="replace"))
                if role is not None:
                    return role
        return None

    def decide(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may go ahead, else the status code and details to refuse it with."""
        allowed = roles_for(method)
        if allowed is None:
            return None
        header = next(
            (value for key, value in metadata or () if key == AUTHORIZATION),
            None,
        )
        role: Role | None
        if header is not None:
            text = header.decode(errors="replace") if isinstance(header, bytes) else header
            if not text.lower().startswith(BEARER):
                return grpc.StatusCode.UNAUTHENTICATED, (
                    f"{method}: the authorization header is not 'Bearer TOKEN'"
                )
            role = self.role_of_token(text[len(BEARER) :].strip())
            if role is None:
                return grpc.StatusCode.UNAUTHENTICATED, f"{method}: the token is not valid"
        else:
            role = self.role_of_certificate(auth_context)
            if role is None:
                return grpc.StatusCode.UNAUTHENTICATED, (
                    f"{method} needs credentials: a bearer token or a client certificate "
                    "with a role"
                )
        if role not in allowed:
            return grpc.StatusCode.PERMISSION_DENIED, (f"role {role.value!r} may not call {method}")
        return None


Behavior = Callable[..., Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every guarded handler so that it checks the caller first (see the module doc)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or roles_for(method) is None:
            return handler
        return _guarded(handler, method, self._auth)


def _guarded(handler: Any, method: str, auth: Authenticator) -> grpc.RpcMethodHandler:
    async def check(context: grpc.aio.ServicerContext) -> None:
        refusal = auth.decide(method, context.invocation_metadata(), context.auth_context())
        if refusal is not None:
            await context.abort(*refusal)

    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def unary_unary_checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary_checked, **common)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def stream_unary_checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary_checked, **common)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def unary_stream_checked(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await check(context)
            result = unary_stream(request, context)
            if inspect.isawaitable(result):  # a handler that writes with context.write()
                await result
                return
            async for response in result:
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream_checked, **common)
    stream_stream = handler.stream_stream

    async def stream_stream_checked(
        requests: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await check(context)
        result = stream_stream(requests, context)
        if inspect.isawaitable(result):
            await result
            return
        async for response in result:
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream_checked, **common)


def read_token(path: str, flag: str) -> str:
    """A token from a file, surrounding whitespace (a trailing newline) dropped. OSError naming
    `flag` and the path when the file cannot be read or holds no token; never quoting it."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise OSError(f"{flag}: cannot read {path}: {reason}") from None
    if not token:
        raise OSError(f"{flag}: {path} holds no token")
    return token


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends its token in (none without a token)."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()
