"""The widget in a real browser (Debian's chromium, driven by Playwright) against real store, bot
and ackbot-web processes: the reply appears live and once, comments cross between pages, markup
stays text, the guard speaks where the reader looks, long threads page, and only allowed sites
may embed it. Skipped, saying why, where no chromium is installed.

Set ACKBOT_UPDATE_SCREENSHOT=1 to rewrite docs/web-thread.png from the first test."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ackbot.testing import child_env, wait_until
from tests.support.gated_responder import GATE_ENV, GATED

from .conftest import call

WITHIN = 20_000  # ms, Playwright's unit
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "web-thread.png"


async def post(page, author: str, text: str) -> None:
    await page.fill(".ackbot-name", author)
    await page.fill(".ackbot-text", text)
    await page.click(".ackbot-post")


async def test_post_and_the_bot_reply_appears_once_without_a_reload(
    store, start_bot, start_web, new_page, tmp_path
):
    await start_bot()
    web = await start_web()
    page, watch = await new_page()
    await page.goto(f"{web.url}/demo/first")
    await page.wait_for_selector(".ackbot-live")  # listed, and watching
    await post(page, "ana", "Hello")
    reply = page.locator(".ackbot-comment .ackbot-reply")
    await reply.first.wait_for(timeout=WITHIN)
    assert "ana" in await reply.first.inner_text()
    assert await page.locator(".ackbot-comment .ackbot-badge").first.text_content() == "bot"
    # Once: one comment, one reply, even after every event for it has arrived.
    await post(page, "ana", "And again")
    await page.locator(".ackbot-reply").nth(1).wait_for(timeout=WITHIN)
    assert await page.locator(".ackbot-comment").count() == 2
    assert await page.locator(".ackbot-reply").count() == 2
    texts = await page.locator(".ackbot-comment > .ackbot-body").all_inner_texts()
    assert texts == ["Hello", "And again"]
    assert not watch.errors
    shot = SCREENSHOT if os.environ.get("ACKBOT_UPDATE_SCREENSHOT") else tmp_path / "thread.png"
    await page.set_viewport_size({"width": 760, "height": 560})
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0


async def test_the_bot_is_writing_while_the_comment_is_leased(
    store, start_bot, start_web, new_page, tmp_path
):
    gate = tmp_path / "gate"
    await start_bot(responder=GATED, env={GATE_ENV: str(gate)})
    web = await start_web()
    page, _ = await new_page()
    await page.goto(f"{web.url}/demo/writing")
    await page.wait_for_selector(".ackbot-live")
    await post(page, "ana", "Are you there?")
    await page.wait_for_selector(".ackbot-writing", timeout=WITHIN)
    gate.touch()
    await page.wait_for_selector(".ackbot-reply", timeout=WITHIN)
    assert await page.locator(".ackbot-writing").count() == 0


async def test_a_comment_written_in_one_page_appears_live_in_another(
    store, start_bot, start_web, new_page
):
    await start_bot()
    web = await start_web()
    reader, _ = await new_page()
    writer, _ = await new_page()
    await reader.goto(f"{web.url}/demo/shared")
    await reader.wait_for_selector(".ackbot-live")
    await writer.goto(f"{web.url}/demo/shared")
    await writer.wait_for_selector(".ackbot-live")
    await post(writer, "bo", "Seen over there?")
    await reader.locator(".ackbot-comment > .ackbot-body", has_text="Seen over there?").wait_for(
        timeout=WITHIN
    )
    await reader.locator(".ackbot-reply").wait_for(timeout=WITHIN)
    assert await reader.locator(".ackbot-comment").count() == 1


PAYLOADS = [
    "<img src=x onerror=\"window.__pwned='img';alert(1)\">",
    "<script>window.__pwned='script';alert(2)</script>",
    "<a href=\"javascript:window.__pwned='link'\">click</a>",
]


async def test_markup_and_script_show_as_text_and_nothing_runs(
    store, start_bot, start_web, new_page
):
    await start_bot()
    web = await start_web("--posts-per-minute", "0")
    page, watch = await new_page()
    await page.goto(f"{web.url}/demo/xss")
    await page.wait_for_selector(".ackbot-live")
    for payload in PAYLOADS:
        await post(page, "<b onmouseover=alert(3)>mallory</b>", payload)
        await page.locator(".ackbot-comment > .ackbot-body", has_text=payload).wait_for(
            timeout=WITHIN
        )
    await page.locator(".ackbot-reply").nth(len(PAYLOADS) - 1).wait_for(timeout=WITHIN)
    # A second reader loads the same thread from the list, not from its own posts.
    other, other_watch = await new_page()
    await other.goto(f"{web.url}/demo/xss")
    await other.locator(".ackbot-reply").nth(len(PAYLOADS) - 1).wait_for(timeout=WITHIN)
    for shown in (page, other):
        bodies = await shown.locator(".ackbot-comment > .ackbot-body").all_inner_texts()
        assert bodies == PAYLOADS
        authors = await shown.locator(
            ".ackbot-comment > .ackbot-meta .ackbot-author"
        ).all_inner_texts()
        assert set(authors) == {"<b onmouseover=alert(3)>mallory</b>"}
        # No element was made from a comment: no img, script, link or bold in the thread.
        assert (
            await shown.locator(
                ".ackbot-list img, .ackbot-list script, .ackbot-list a, .ackbot-list b"
            ).count()
            == 0
        )
        await shown.locator(".ackbot-comment .ackbot-body").first.hover()
        assert await shown.evaluate("window.__pwned") is None
    assert watch.dialogs == other_watch.dialogs == []
    assert watch.errors == other_watch.errors == []


async def test_the_rate_limit_and_the_size_limit_are_told_to_the_reader(store, start_web, new_page):
    web = await start_web("--posts-per-minute", "1", "--max-text-bytes", "40")
    page, _ = await new_page()
    await page.goto(f"{web.url}/demo/limits")
    await page.wait_for_selector(".ackbot-live")
    # Size: told before sending, and the button refuses.
    await page.fill(".ackbot-name", "ana")
    await page.fill(".ackbot-text", "é" * 21)  # 42 bytes
    assert await page.locator(".ackbot-count").inner_text() == "42 / 40 bytes"
    assert await page.locator(".ackbot-post").is_disabled()
    assert "Too long" in await page.locator(".ackbot-error").inner_text()
    await page.fill(".ackbot-text", "short")
    assert await page.locator(".ackbot-post").is_enabled()
    assert await page.locator(".ackbot-error").inner_text() == ""
    # Rate: the first comment goes, the second is refused with the wait.
    await page.click(".ackbot-post")
    await page.locator(".ackbot-comment").wait_for(timeout=WITHIN)
    await post(page, "ana", "too soon")
    error = page.locator(".ackbot-error", has_text="Too fast")
    await error.wait_for(timeout=WITHIN)
    assert "at most 1 a minute" in await error.inner_text()
    assert await page.locator(".ackbot-comment").count() == 1
    # What was typed is kept for later.
    assert await page.locator(".ackbot-text").input_value() == "too soon"


async def test_long_threads_are_paged(store, start_web, new_page, tmp_path):
    token = tmp_path / "site-token"
    token.write_text("backend")
    web = await start_web("--site-token-file", str(token))
    for n in range(60):
        await call(
            web.url,
            "PostComment",
            # The demo page's thread is its path: /demo/long is demo:long.
            {"thread": "demo:long", "author": "site", "text": f"comment {n:02d}"},
            {"Authorization": "Bearer backend"},
        )
    page, _ = await new_page()
    await page.goto(f"{web.url}/demo/long")
    await page.wait_for_selector(".ackbot-live")
    comments = page.locator(".ackbot-comment")
    assert await comments.count() == 50
    assert await comments.first.locator(".ackbot-body").inner_text() == "comment 10"
    await page.click(".ackbot-older")

    async def all_shown() -> bool:
        return await comments.count() == 60

    await wait_until(all_shown, 10, what="60 comments shown")
    texts = await page.locator(".ackbot-comment > .ackbot-body").all_inner_texts()
    assert texts == [f"comment {n:02d}" for n in range(60)]
    assert await page.locator(".ackbot-older").is_hidden()


def embedding_page(web_url: str, thread: str) -> bytes:
    return (
        "<!doctype html><html><head><title>a blog</title></head><body><h1>A blog post</h1>"
        f'<div id="ackbot-comments" data-thread="{thread}"></div>'
        f'<script src="{web_url}/embed.js" defer></script></body></html>'
    ).encode()


@contextlib.contextmanager
def site(pages: dict[str, bytes]) -> Iterator[str]:
    """Another site, a real HTTP server of its own (another port is another origin; on loopback,
    as chromium lets only a loopback page call a loopback server), serving `pages["page"]`
    (set once the front door's address is known): yields its origin."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages["page"]
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_embedded_in_an_allowed_site_it_works_and_elsewhere_it_is_refused(
    store, start_bot, start_web, new_page
):
    await start_bot()
    pages: dict[str, bytes] = {}
    with site(pages) as allowed_origin, site(pages) as other_origin:
        web = await start_web("--allowed-origins", allowed_origin)
        pages["page"] = embedding_page(web.url, "embedded")

        allowed, watch = await new_page()
        await allowed.goto(f"{allowed_origin}/post")
        await allowed.wait_for_selector(".ackbot-live")
        await post(allowed, "ana", "From the blog")
        await allowed.locator(".ackbot-reply").wait_for(timeout=WITHIN)
        assert not watch.errors

        refused, _ = await new_page()
        await refused.goto(f"{other_origin}/post")
        await refused.locator(".ackbot-status", has_text="unavailable").wait_for(timeout=WITHIN)
        assert await refused.locator(".ackbot-comment").count() == 0
        outcome = await refused.evaluate(
            """async (api) => {
                try {
                    const r = await fetch(api, {method: "POST", body: '{"thread": "embedded"}',
                        headers: {"Content-Type": "application/json"}});
                    return "read " + r.status;
                } catch (e) { return "refused"; }
            }""",
            f"{web.url}/ackbot.web.v1.CommentService/ListThread",
        )
        assert outcome == "refused"
    # Nothing from the other site was stored, and the front door counted the refusals.
    listed = await call(web.url, "ListThread", {"thread": "embedded"})
    assert [c["text"] for c in listed["comments"]] == ["From the blog"]


async def test_the_reader_is_told_when_the_comments_are_unavailable(store, start_web, new_page):
    web = await start_web()
    page, _ = await new_page()
    await page.goto(f"{web.url}/demo/down")
    await page.wait_for_selector(".ackbot-live")
    await store.aterminate()
    await post(page, "ana", "Anyone?")
    await page.locator(".ackbot-error", has_text="unavailable").wait_for(timeout=WITHIN)
    assert await page.locator(".ackbot-comment").count() == 0


async def test_make_run_then_open_the_url_and_write_hello(new_page, tmp_path):
    """Issue 20's "done": `make run` (tools/run_local.py), open the URL its banner names, write
    "Hello", and the bot's answer appears under it, once."""
    ports = []
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    store, bot, web = (f"127.0.0.1:{port}" for port in ports)
    output = tmp_path / "run_local.log"
    with output.open("wb") as sink:
        runner = await asyncio.to_thread(
            subprocess.Popen,
            [
                sys.executable,
                str(ROOT / "tools" / "run_local.py"),
                *("--store-listen", store, "--bot-listen", bot, "--web-listen", web),
                *("--db", f"sqlite+aiosqlite:///{tmp_path}/ackbot.db"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env(),
        )
    try:
        banner = re.compile(r"Open (http://\S+/) and write a comment")

        def url() -> str | None:
            assert runner.poll() is None, output.read_text()
            found = banner.search(output.read_text())
            return found.group(1) if found else None

        address = await wait_until(url, 60, 0.2, what="make run's banner")
        page, watch = await new_page()
        await page.goto(address)
        await page.wait_for_selector(".ackbot-live")
        await post(page, "newcomer", "Hello")
        await page.locator(".ackbot-reply").wait_for(timeout=WITHIN)
        assert "newcomer" in await page.locator(".ackbot-reply .ackbot-body").inner_text()
        assert await page.locator(".ackbot-comment").count() == 1
        assert await page.locator(".ackbot-reply").count() == 1
        assert not watch.errors
    finally:
        runner.send_signal(signal.SIGINT)
        await asyncio.to_thread(runner.wait, 30)
