"""The parts every ackbot gRPC server has: health checking, server reflection, and a port of
its own.

Reflection lets people debug with grpcurl without the .proto files; the standard
grpc.health.v1 service lets tests, orchestrators and `make run` wait for readiness.

gRPC servers set SO_REUSEPORT by default, so a second process binds a port that is in use
without a word, and the kernel splits new connections between the two: clients of a store would
get answers from two databases. `create_server` turns that off, and `bind_insecure` says when
the address is taken.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

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
                        return  # after the NOT_SERVING above: the stream ends with OK
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


def create_server(options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Server:
    """A grpc.aio server with `options` that will not share its port with another process."""
    return grpc.aio.server(options=[*options, NO_SHARED_PORT])


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
    """Binds HOST:PORT (port 0: any free one); returns HOST:PORT with the port actually bound.
    Raises OSError naming the address when it cannot be bound: AddressInUse when another
    socket listens there."""
    host, port = split_host_port(listen)
    in_use = AddressInUse(f"cannot listen on {listen}: the address is already in use")
    # Asked first, because gRPC itself would also log a multi-line error of its own.
    if port and _address_in_use(host, port):
        raise in_use
    try:
        bound = server.add_insecure_port(format_address(host, port))
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
