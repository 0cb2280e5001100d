"""The reliability tests start the same services as the integration tests (the shared fixtures
of tests/support/fixtures.py), only harder; this adds one for services a test builds itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest

from ackbot.testing import Service


@pytest.fixture
def run_service() -> Iterator[Callable[[Service], Awaitable[Service]]]:
    """`await run_service(service)` starts a Service a test built itself (its own address or
    launcher), waits until it is ready, and stops it at teardown whatever happened."""
    started: list[Service] = []

    async def run(service: Service) -> Service:
        started.append(service)
        return await service.astart()

    yield run
    for service in reversed(started):
        service.cleanup()
