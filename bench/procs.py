"""The processes of a benchmark: real store, bot and echo servers, started the tests' way.

They are started and awaited by tests/integration/harness.py (log file, `listening on` line,
then health SERVING, under one deadline), so the benchmark measures exactly the services the
integration tests check. That module is test code without full annotations:
tests/integration/typed_harness.py imports it by name and types the part of it we rely on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from tests.integration.typed_harness import Service, load

_harness: Any = load()

RPC_TIMEOUT: float = _harness.RPC_TIMEOUT
PAGE_SIZE: int = _harness.PAGE_SIZE


def child_env() -> dict[str, str]:
    """Our environment minus ACKBOT_* settings, with the repository root on PYTHONPATH (so a
    bot can load bench.responders and a client process can import bench)."""
    return cast(dict[str, str], _harness.child_env())


def store_service(
    workdir: Path, db_path: Path, *, name: str = "store", profile_to: Path | None = None
) -> Service:
    """The store at its default durability, on a free loopback port; under cProfile
    (bench.profiled_store), which writes `profile_to` when the store exits, if that is set."""
    service = cast(Service, _harness.store_service(workdir, db_path=db_path, name=name))
    if profile_to is not None:
        module_at = service.argv.index("ackbot.store")
        service.argv[module_at : module_at + 1] = ["bench.profiled_store", str(profile_to)]
    return service


def bot_service(
    workdir: Path,
    store_address: str,
    *,
    persona: str,
    max_in_flight: int,
    responder: str | None = None,
) -> Service:
    return cast(
        Service,
        _harness.bot_service(
            workdir,
            store_address,
            persona=persona,
            max_in_flight=max_in_flight,
            responder=responder,
        ),
    )


def echo_service(workdir: Path) -> Service:
    argv = [sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"]
    return cast(Service, _harness.Service("echo", argv, workdir / "echo.log", child_env()))


def stop_all(services: Iterable[Service]) -> None:
    """Teardown: stops every process whatever happened, never raises."""
    for service in services:
        service.cleanup()
