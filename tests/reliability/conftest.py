"""The integration fixtures (real store and bot subprocesses on fresh SQLite files), reused as
they are: the reliability tests start the same services, only harder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest

from ackbot.testing import Service
from tests.integration.conftest import (  # noqa: F401 (fixtures and a hook, found by name)
    _remember_services,
    channel,
    pytest_runtest_makereport,
    start_bot,
    start_store,
    store,
    stub,
)


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
