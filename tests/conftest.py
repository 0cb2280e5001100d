"""Suite-wide hooks: whether the PostgreSQL tests run, skip or fail, and the order in which
parallel workers (`make test` runs pytest-xdist) take the tests."""

from __future__ import annotations

import os

import pytest

from tests.support.postgres import POSTGRES_URL_ENV

# The fixtures that run the real services (a store, bots, a stub) and the hook that attaches their
# logs to a failed test's report: every folder's tests may use them.
pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A worker takes the next test when it is nearly idle, in this order: longest first, so no
    # long test starts near the end and keeps the run going alone while the other workers have
    # nothing left (longest-first is close to the best a greedy scheduler can do). A serial run
    # keeps file order.
    if not hasattr(config, "workerinput"):
        return
    items.sort(key=_expected_length, reverse=True)


def _expected_length(item: pytest.Item) -> tuple[bool, float]:
    """Slow tests before the rest; among them, a longer own timeout (the chaos profiles, the
    soak, the keepalive) means a longer test."""
    timeout = item.get_closest_marker("timeout")
    seconds = float(timeout.args[0]) if timeout is not None and timeout.args else 0.0
    return item.get_closest_marker("slow") is not None, seconds


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The one place that decides about the tests marked `postgres`: they run where
    ACKBOT_TEST_POSTGRES_URL names a server. Without it they skip, saying why, on a developer's
    machine; in CI (CI=true, as GitHub Actions and most others set it) they fail, so that a
    pipeline that lost its database cannot pass with a sixth of the suite skipped."""
    if item.get_closest_marker("postgres") is None or os.environ.get(POSTGRES_URL_ENV):
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI is set but {POSTGRES_URL_ENV} is not: the PostgreSQL tests must run in CI")
    pytest.skip(f"{POSTGRES_URL_ENV} is not set")
