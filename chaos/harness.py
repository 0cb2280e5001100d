"""The integration tests' process harness (tests/integration/harness.py), typed for the chaos run.

The chaos run starts, kills and waits on the real services exactly as the integration tests do,
so it reuses their harness instead of keeping a second copy. That module is test code without
full annotations: tests/integration/typed_harness.py imports it by name and types the part of
it that the run relies on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from tests.integration.typed_harness import Service, load

_harness: Any = load()

RPC_TIMEOUT: float = _harness.RPC_TIMEOUT
PAGE_SIZE: int = _harness.PAGE_SIZE


def store_service(workdir: Path, *, db_path: Path, args: Iterable[str], name: str) -> Service:
    return cast(Service, _harness.store_service(workdir, db_path=db_path, args=args, name=name))


def bot_service(
    workdir: Path,
    store_address: str,
    *,
    persona: str,
    max_in_flight: int,
    lease_seconds: float,
    responder: str,
    args: Iterable[str],
) -> Service:
    return cast(
        Service,
        _harness.bot_service(
            workdir,
            store_address,
            persona=persona,
            max_in_flight=max_in_flight,
            lease_seconds=lease_seconds,
            responder=responder,
            args=args,
        ),
    )
