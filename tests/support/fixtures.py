"""Fixtures that run the real services: a store on a fresh SQLite file, bots on demand, and a
grpc.aio stub made inside the test's running loop. When a test fails, the tail of every service
log it used is attached to the report, so CI output shows why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from ackbot.testing import Service, bot_service, store_service
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import ConsumeSettler

_FIRST_SERVICE = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def _remember_services(request):
    """Notes which services the test starts, and after every other fixture stopped them, fails
    the test when one crashed, hung on SIGTERM or logged a traceback (Service.problems): what a
    service does after the test's last call is part of the test. A test that makes a service
    fail on purpose says so (`service.expect_exit(code)`, `service.expect_traceback()`)."""
    first = len(Service.registry)
    request.node.stash[_FIRST_SERVICE] = first
    yield
    problems = [
        f"{service.name} {problem}\n{service.describe()}"
        for service in Service.registry[first:]
        for problem in service.problems()
    ]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and _FIRST_SERVICE in item.stash:
        first = item.stash[_FIRST_SERVICE]
        for index, service in enumerate(Service.registry):
            running = service.proc is not None and service.proc.poll() is None
            # This test's services, and shared (module-scoped) ones it talked to.
            if index >= first or running:
                report.sections.append((f"{service.name} log ({report.when})", service.describe()))
    return report


@pytest.fixture
def start_store(tmp_path):
    """start_store(args=[...], name=..., db_path=...) -> a ready store Service (sync).
    Use `await start_store.started(...)` in async tests."""
    services: list[Service] = []

    def make(**options) -> Service:
        service = store_service(tmp_path, **options)
        services.append(service)
        return service

    def start(**options) -> Service:
        return make(**options).start().wait_ready()

    async def started(**options) -> Service:
        return await make(**options).astart()

    start.started = started
    yield start
    for service in reversed(services):
        service.cleanup()


@pytest.fixture
def store(start_store) -> Service:
    return start_store()


@pytest.fixture
def start_bot(tmp_path, store):
    """`await start_bot(persona=..., responder=..., env=..., ...)` -> a ready bot Service,
    connected to `store` (its health is SERVING only while its stream is up)."""
    services: list[Service] = []

    async def start(**options) -> Service:
        service = bot_service(tmp_path, store.address, **options)
        services.append(service)
        return await service.astart()

    yield start
    for service in reversed(services):
        service.cleanup()


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


@pytest.fixture
async def channel(store):
    async with grpc.aio.insecure_channel(store.address) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return pb_grpc.MessageStoreStub(channel)


@pytest.fixture(params=["unary", "consume"])
async def settler(request, stub):
    """The stub, with its settling calls made by unary RPCs or on a Consume session: the
    contract is the same on both paths."""
    if request.param == "unary":
        yield stub
        return
    settler = ConsumeSettler(stub)
    try:
        yield settler
    finally:
        await settler.close()
