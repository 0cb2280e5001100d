"""Fixtures for the llm tests: one real model server per module (tests/llm/llama_server.py).
Without ackbot[llm-test] installed they fail and say so: never skipped, because a run that
asked for a real model must not pass without one. A failed test's report carries the tail of
the model server's log and of the store's and bot's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ackbot.testing import Service

from .llama_server import LlamaServer, model_path

_LLAMA = pytest.StashKey[LlamaServer]()


@pytest.fixture(scope="module")
def llama(request, tmp_path_factory) -> Iterator[LlamaServer]:
    """One model server for a module's tests: loading the model is the slow part of a start."""
    server = LlamaServer(model_path(), tmp_path_factory.mktemp("llama") / "llama-server.log")
    request.config.stash[_LLAMA] = server
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        server = item.config.stash.get(_LLAMA, None)
        if server is not None:
            report.sections.append(("llama_cpp.server log", server.describe()))
        for service in Service.registry:
            report.sections.append((f"{service.name} log", service.describe()))
    return report
