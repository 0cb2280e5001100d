"""The integration fixtures (real store and bot subprocesses on fresh SQLite files), reused as
they are: the reliability tests start the same services, only harder."""

from __future__ import annotations

from tests.integration.conftest import (  # noqa: F401 (fixtures and a hook, found by name)
    _remember_services,
    channel,
    pytest_runtest_makereport,
    start_bot,
    start_store,
    store,
    stub,
)
