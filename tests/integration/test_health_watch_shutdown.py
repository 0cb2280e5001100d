"""An open grpc.health.v1.Health/Watch stream does not hold up a graceful stop: the watcher
sees NOT_SERVING, then its stream ends, and the process exits long before --grace-seconds."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ackbot.store.servicer import SERVICE_NAME
from ackbot.testing import RPC_TIMEOUT, ServiceError

GRACE_SECONDS = 20
# A small fraction of the grace period: what stopping costs without the watch, and margin for
# a loaded 2-core machine.
STOP_WITHIN = 8.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("service", ["", SERVICE_NAME, "no.such.Service"])
async def test_an_open_watch_ends_at_shutdown_and_does_not_delay_it(start_store, service):
    store = await start_store.started(args=["--grace-seconds", str(GRACE_SECONDS)])
    async with grpc.aio.insecure_channel(store.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=60)
        first = await asyncio.wait_for(watch.read(), RPC_TIMEOUT)
        expected_first = (
            SERVING
            if service != "no.such.Service"
            else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        )
        assert first.status == expected_first

        started = time.monotonic()
        try:
            code = await store.aterminate(within=STOP_WITHIN)
        except ServiceError as exc:
            pytest.fail(f"the store took over {STOP_WITHIN:g} s to stop with a Watch open: {exc}")
        took = time.monotonic() - started
        assert code == 0, store.describe()
        assert took < STOP_WITHIN, store.describe()

        # What the watcher saw after the first answer: NOT_SERVING (for a known service), then
        # the end of the stream with OK, not a broken connection.
        rest = []
        while (response := await asyncio.wait_for(watch.read(), RPC_TIMEOUT)) is not (grpc.aio.EOF):
            rest.append(response.status)
        assert rest == ([NOT_SERVING] if service != "no.such.Service" else []), rest
        assert await watch.code() == grpc.StatusCode.OK, await watch.details()
