"""Fixtures for the web front door: a real store, bot and `ackbot-web` as processes, a small
Connect client over HTTP/1.1 (urllib: what `curl` sends), and Debian's chromium driven by
Playwright. Where no chromium is installed the browser tests skip, saying why (`.ci/run`
installs it, so CI runs them)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ackbot.testing import Service, bot_service, store_service
from ackbot.testing.web import WebService, web_service

CHROMIUM = os.environ.get("ACKBOT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API = "/ackbot.web.v1.CommentService/"
HTTP_TIMEOUT = 10.0


@pytest.fixture
async def store(tmp_path) -> Any:
    # With metrics: a test counts the store's WatchMessages calls.
    service = store_service(tmp_path, args=["--metrics-listen", "127.0.0.1:0"])
    await service.astart()
    yield service
    service.cleanup()


@pytest.fixture
async def start_bot(tmp_path, store) -> Any:
    services: list[Service] = []

    async def start(**options: Any) -> Service:
        service = bot_service(tmp_path, store.address, **options)
        services.append(service)
        return await service.astart()

    yield start
    for service in reversed(services):
        service.cleanup()


@pytest.fixture
async def start_web(tmp_path, store) -> Any:
    """`await start_web(*flags)` -> a ready ackbot-web on a free port, talking to `store`."""
    services: list[WebService] = []

    async def start(*args: str, name: str = "web", env: dict[str, str] | None = None) -> WebService:
        service = web_service(tmp_path, store.address, *args, name=name, env=env)
        services.append(service)
        await service.astart()
        return service

    yield start
    for service in reversed(services):
        service.cleanup()


_FIRST_SERVICE = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def _remember_services(request):
    request.node.stash[_FIRST_SERVICE] = len(Service.registry)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the log tails of the services it started."""
    report = yield
    if report.failed and _FIRST_SERVICE in item.stash:
        for service in Service.registry[item.stash[_FIRST_SERVICE] :]:
            report.sections.append((f"{service.name} log ({report.when})", service.describe()))
    return report


# -- a Connect client, as curl or a site's backend calls the API ---------------------------------


class Failed(Exception):
    def __init__(self, status: int, data: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {data}")
        self.status = status
        self.code = data.get("code")
        self.message = data.get("message", "")


def call_sync(
    url: str, method: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}{API}{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise Failed(exc.code, json.loads(exc.read() or b"{}")) from None


async def call(
    url: str, method: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return await asyncio.to_thread(call_sync, url, method, body, headers)


def watch_frames(url: str, body: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """WatchThread's frames (flags, JSON) as they come: a blocking iterator."""
    payload = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}{API}WatchThread",
        data=b"\0" + struct.pack(">I", len(payload)) + payload,
        headers={"Content-Type": "application/connect+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT * 3) as response:
        while True:
            head = response.read(5)
            if len(head) < 5:
                return
            flags, size = head[0], struct.unpack(">I", head[1:])[0]
            yield flags, json.loads(response.read(size))


# -- the browser ---------------------------------------------------------------------------------


def _chromium_problem() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
async def browser() -> Any:
    problem = _chromium_problem()
    if problem is not None:
        pytest.skip(problem)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class PageWatch:
    """What a page did that a test must see did not happen: dialogs, uncaught errors."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


@pytest.fixture
async def new_page(browser) -> Any:
    """`await new_page()` -> (page, PageWatch) in a fresh browser context."""
    contexts = []

    async def make() -> tuple[Any, PageWatch]:
        context = await browser.new_context()
        contexts.append(context)
        page = await context.new_page()
        return page, PageWatch(page)

    yield make
    for context in contexts:
        await context.close()
