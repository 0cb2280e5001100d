"""`ackbot-web` as a process for tests and benchmarks: ready once it logs `listening on` and
its /healthz says SERVING (its one store watch is open)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ackbot.testing.process import Service, child_env


class WebService(Service):
    """A Service whose readiness is HTTP (/healthz), not grpc.health.v1."""

    def is_serving(self, service: str = "") -> bool:
        self._fail_if_exited("exited while the caller waited for it")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1.0) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def web_service(
    workdir: Path,
    store_address: str,
    *args: str,
    name: str = "web",
    log_level: str = "DEBUG",
    env: Mapping[str, str] | None = None,
) -> WebService:
    """An ackbot-web on a free loopback port, talking to `store_address`; `args` come last,
    `env` is added to `child_env()`."""
    argv = [
        sys.executable,
        "-m",
        "ackbot.web",
        "--store",
        store_address,
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        log_level,
        "--grace-seconds",
        "2",
        *args,
    ]
    return WebService(name, argv, workdir / f"{name}.log", child_env(env))
