"""The parts every ackbot gRPC server has: health checking and server reflection.

Reflection lets people debug with grpcurl without the .proto files; the standard
grpc.health.v1 service lets tests, orchestrators and `make run` wait for readiness.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> HealthServicer:
    """Registers health and reflection for `service_names` on `server`; every status starts
    NOT_SERVING (grpc's servicer would start the overall one at SERVING) until set_serving."""
    service_names = list(service_names)
    health = HealthServicer()
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
    Raises OSError naming the address when it cannot be bound."""
    host, port = split_host_port(listen)
    try:
        bound = server.add_insecure_port(format_address(host, port))
    except RuntimeError as exc:  # newer grpc raises instead of returning 0
        raise OSError(f"could not bind {listen}: {exc}") from exc
    if bound == 0:
        raise OSError(f"could not bind {listen}")
    return format_address(host, bound)
