"""The parts every ackbot gRPC server has: health checking, server reflection, and a port of
its own.

Reflection lets people debug with grpcurl without the .proto files; the standard
grpc.health.v1 service lets tests, orchestrators and `make run` wait for readiness.

gRPC servers set SO_REUSEPORT by default, so a second process binds a port that is in use
without a word, and the kernel splits new connections between the two: clients of a store would
get answers from two databases. `create_server` turns that off, and `bind` says when the
address is taken.

TLS: `server_credentials` and `channel_credentials` read PEM files into gRPC credentials (mutual
TLS when the server is given a client CA); `check_listen` keeps a server that is neither
encrypted nor authenticating on loopback unless told otherwise (safe by default).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# One listener per port: see the module docstring.
NO_SHARED_PORT = ("grpc.so_reuseport", 0)


class EndingHealthServicer(HealthServicer):
    """grpc's aio health servicer, whose Watch streams end at graceful shutdown.

    grpc's own Watch waits for the next change forever: an open Watch (an orchestrator, a load
    balancer, `grpcurl ... Health/Watch`) is an RPC in flight, so every graceful stop waited
    the whole grace period for it and then cancelled it. Here, once `enter_graceful_shutdown`
    has set NOT_SERVING, each watcher sends that last change and its stream ends with OK: the
    watcher learns the server is going, and `server.stop(grace)` need not wait for it.

    Watch is grpc's loop with that one exit added; it shares the parent's status table and
    conditions (`_server_status`, `_server_watchers`), so `set` and `Check` stay grpc's.
    """

    # grpc's servicer sets these in __init__; its type stubs leave them out.
    _server_status: MutableMapping[str, int]  # ServingStatus values
    _server_watchers: MutableMapping[str, asyncio.Condition]
    _watcher_count_by_service: MutableMapping[str, int]
    _gracefully_shutting_down: bool

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        last_status = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, SERVICE_UNKNOWN)
                    if status != last_status:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last_status = status
                    if self._gracefully_shutting_down:
                        # enter_graceful_shutdown sets every known service NOT_SERVING, but it
                        # may still be waiting for this condition's lock (held here while a
                        # write went out) to do so: send what it is about to set, then the
                        # stream ends with OK.
                        if service in self._server_status and last_status != NOT_SERVING:
                            await context.write(health_pb2.HealthCheckResponse(status=NOT_SERVING))
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        # grpc wakes the watchers of the services it knows; a watcher of an unknown service
        # (SERVICE_UNKNOWN) waits too, and must also end.
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()


class AddressInUse(OSError):
    """Another socket listens on the address a server was told to listen on."""


def create_server(
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with `options` that will not share its port with another process."""
    return grpc.aio.server(options=[*options, NO_SHARED_PORT], interceptors=list(interceptors))


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> HealthServicer:
    """Registers health and reflection for `service_names` on `server`; every status starts
    NOT_SERVING (grpc's servicer would start the overall one at SERVING) until set_serving."""
    service_names = list(service_names)
    health = EndingHealthServicer()
    await set_serving(health, service_names, serving=False)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return health


async def set_serving(health: HealthServicer, service_names: Iterable[str], serving: bool) -> None:
    """Sets the overall status ("") and each named service's status together."""
    status = SERVING if serving else NOT_SERVING
    for name in ["", *service_names]:
        await health.set(name, status)


def split_host_port(address: str) -> tuple[str, int]:
    """Parses HOST:PORT (and [v6]:PORT); raises ValueError naming the address otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_insecure(server: grpc.aio.Server, listen: str) -> str:
    """`bind` without TLS."""
    return bind(server, listen)


def bind(
    server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None
) -> str:
    """Binds HOST:PORT (port 0: any free one), with TLS when `credentials` are given; returns
    HOST:PORT with the port actually bound. Raises OSError naming the address when it cannot be
    bound: AddressInUse when another socket listens there."""
    host, port = split_host_port(listen)
    in_use = AddressInUse(f"cannot listen on {listen}: the address is already in use")
    # Asked first, because gRPC itself would also log a multi-line error of its own.
    if port and _address_in_use(host, port):
        raise in_use
    try:
        target = format_address(host, port)
        if credentials is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, credentials)
    except RuntimeError as exc:  # newer grpc raises instead of returning 0
        if port and _address_in_use(host, port):  # taken since we asked
            raise in_use from exc
        raise OSError(f"could not bind {listen}: {exc}") from exc
    if bound == 0:  # older grpc
        if port and _address_in_use(host, port):
            raise in_use
        raise OSError(f"could not bind {listen}")
    return format_address(host, bound)


def _address_in_use(host: str, port: int) -> bool:
    """Whether binding HOST:PORT fails because another socket holds it, tried the way gRPC
    binds (SO_REUSEADDR, so that connections in TIME_WAIT do not count; no SO_REUSEPORT)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # an unknown host: gRPC's own error says so
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


# -- TLS and the listen check -----------------------------------------------------------------


class InsecureListen(ValueError):
    """A server asked to listen beyond loopback without TLS and authentication."""


def read_pem(path: str, what: str) -> bytes:
    """The file's bytes; OSError naming `what` (the flag) and the path when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise OSError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


class CertificateFiles:
    """The server's PEM files, re-read when they change, so that a renewed certificate (or CA)
    takes effect for new connections without a restart.

    gRPC asks `fetch` before each TLS handshake (grpc.dynamic_ssl_server_credentials); it looks
    at the files' modification times and sizes only, and reads them again when those changed.
    A set of files that cannot be read or does not load (caught half-written, say) keeps the
    previous configuration, with a warning, until the next change; connections already open
    keep theirs.
    """

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self._paths = [path for path in (cert, key, client_ca) if path is not None]
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._seen = self._stamp()
        #: how many times the files were loaded again after a change
        self.reloads = 0

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths:
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((-1, -1))
            else:
                stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Reads the files; OSError naming the flag when one cannot be read, or when the key
        does not belong to the certificate (gRPC would load such a pair and fail every
        handshake; between the renames of a renewal the files are such a pair for a moment)."""
        pair = (read_pem(self._key, "--tls-key"), read_pem(self._cert, "--tls-cert"))
        try:
            # The standard library's check of the pair; an encrypted key fails it too (gRPC
            # cannot use one), and the empty password keeps OpenSSL from prompting for one.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                self._cert, self._key, password=lambda: b""
            )
        except ssl.SSLError as exc:
            raise OSError(
                f"--tls-key {self._key} is not the key of --tls-cert {self._cert} "
                f"(or not a PEM certificate and unencrypted key): {exc.reason}"
            ) from None
        root = read_pem(self._client_ca, "--tls-client-ca") if self._client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            configuration = self.load()
        except OSError as exc:
            log.warning("TLS files changed but cannot be used yet, keeping the old ones: %s", exc)
            return None
        self.reloads += 1
        log.info("TLS files changed: new connections use the new certificate")
        return configuration


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with the certificate chain and key in these PEM files, re-read when they change
    (CertificateFiles); with `client_ca`, mutual TLS: every client must present a certificate
    signed by that CA. Raises OSError naming the flag when a file cannot be read now."""
    files = CertificateFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.load(),
        # typeshed wants a configuration back; gRPC documents None as "unchanged".
        files.fetch,  # type: ignore[arg-type]
        require_client_authentication=client_ca is not None,
    )


def channel_credentials(
    ca: str | None, cert: str | None = None, key: str | None = None, *, flags: str = "--tls"
) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate `ca` signed (None: the system's roots), presenting the
    client certificate `cert` with `key` when given (mutual TLS). `flags` prefixes the names in
    errors, e.g. --store-ca."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, f"{flags}-ca") if ca else None,
        private_key=read_pem(key, f"{flags}-key") if key else None,
        certificate_chain=read_pem(cert, f"{flags}-cert") if cert else None,
    )


def tls_settings_problem(
    cert: str | None, key: str | None, client_ca: str | None
) -> tuple[str, str] | None:
    """(flag, problem) when a server's TLS flags do not go together, else None."""
    if (cert is None) != (key is None):
        return "--tls-cert", "--tls-cert and --tls-key go together"
    if client_ca is not None and cert is None:
        return "--tls-client-ca", "needs --tls-cert and --tls-key (mutual TLS is TLS)"
    return None


def client_credentials(
    target: str,
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    token: str | None = None,
    flags: str = "--tls",
) -> grpc.ChannelCredentials | None:
    """What a client channel to `target` needs: None for plaintext without a token (open the
    channel insecure); TLS when `ca` is given, mutual with `cert` and `key`; and the token as
    `authorization: Bearer` on every call. gRPC sends call credentials only over a secure
    channel, so a token without TLS rides on local credentials, which stay plaintext on the wire
    but connect to loopback addresses only: a token never crosses a network unencrypted.
    Raises ValueError when a token would go to a non-loopback address without TLS."""
    if ca is not None:
        channel = channel_credentials(ca, cert, key, flags=flags)
    elif token:
        host, _ = split_host_port(target)
        if not is_loopback(host):
            raise ValueError(
                f"a token goes to {target} only over TLS: give the server's CA ({flags}-ca)"
            )
        channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        return None
    if token:
        return grpc.composite_channel_credentials(
            channel, grpc.access_token_call_credentials(token)
        )
    return channel


def is_loopback(host: str) -> bool:
    """Whether HOST names this machine only: `localhost` or a loopback IP literal. Any other
    name might resolve to an interface others reach, so it does not count."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(
    listen: str, *, tls: bool, authenticated: bool, allow_flag: str, allowed: bool
) -> None:
    """Raises InsecureListen, one line naming `allow_flag`, when `listen` is not loopback and the
    server lacks TLS or authentication, unless `allowed`."""
    host, _ = split_host_port(listen)
    if allowed or is_loopback(host) or (tls and authenticated):
        return
    missing = " and ".join(
        part
        for part, have in (("TLS (--tls-cert/--tls-key)", tls), ("authentication", authenticated))
        if not have
    )
    raise InsecureListen(
        f"refusing to listen on {listen} without {missing}: it is not a loopback address; "
        f"pass {allow_flag} to allow it"
    )
