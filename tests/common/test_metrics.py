"""The gRPC metrics interceptor on a real in-process grpc.aio server: each call kind is
counted under go-grpc-prometheus's names, a call the auth interceptor refuses is counted with
its code, and two servers in one process keep their own registries."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from ackbot.common.auth import Authenticator, AuthInterceptor, Role
from ackbot.common.metrics import GrpcServerMetrics, MetricsInterceptor
from ackbot.common.serving import add_health_and_reflection, bind, create_server, set_serving

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


async def serve(registry: CollectorRegistry, token: str | None = None):
    interceptors: list[grpc.aio.ServerInterceptor] = [
        MetricsInterceptor(GrpcServerMetrics(registry))
    ]
    if token:
        interceptors.append(AuthInterceptor(Authenticator({Role.BOT: token})))
    server = create_server(interceptors=interceptors)
    address = bind(server, "127.0.0.1:0")
    health = await add_health_and_reflection(server, [])
    await set_serving(health, [], serving=True)
    await server.start()
    return server, address


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def servers():
    started: list[grpc.aio.Server] = []

    async def start(registry: CollectorRegistry, token: str | None = None) -> str:
        server, address = await serve(registry, token)
        started.append(server)
        return address

    yield start
    for server in started:
        await server.stop(None)


async def test_unary_and_streams_are_counted_and_refusals_keep_their_code(servers):
    registry, other = CollectorRegistry(), CollectorRegistry()
    address = await servers(registry, token="secret")
    await servers(other)
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(2):
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        # Reflection needs a role: without a token the auth interceptor refuses it.
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    unary = {"grpc_type": "unary", "grpc_service": HEALTH, "grpc_method": "Check"}
    assert count(registry, "grpc_server_handled_total", **unary, grpc_code="OK") == 2
    assert count(registry, "grpc_server_handled_total", **unary, grpc_code="NOT_FOUND") == 1
    assert count(registry, "grpc_server_started_total", **unary) == 3
    assert count(registry, "grpc_server_msg_received_total", **unary) == 3
    assert count(registry, "grpc_server_msg_sent_total", **unary) == 2
    assert count(registry, "grpc_server_handling_seconds_count", **unary) == 3

    watch_labels = {"grpc_type": "server_stream", "grpc_service": HEALTH, "grpc_method": "Watch"}
    assert count(registry, "grpc_server_started_total", **watch_labels) == 1
    assert count(registry, "grpc_server_msg_sent_total", **watch_labels) >= 1

    bidi = {"grpc_type": "bidi_stream", "grpc_service": REFLECTION}
    refused_labels = {**bidi, "grpc_method": "ServerReflectionInfo"}
    assert (
        count(registry, "grpc_server_handled_total", **refused_labels, grpc_code="UNAUTHENTICATED")
        == 1
    )
    # The other server in this process saw none of it.
    assert count(other, "grpc_server_started_total", **unary) == 0
