"""A commenter's own delete and edit, and the moderation hold, in a real browser (Debian's
chromium, driven by Playwright) against real store, bot and ackbot-web processes: the controls
show only under one's own comments and only within the window, a deletion leaves every page
live, and a held comment is its writer's alone until a moderator approves it, then everyone's.
Skipped, saying why, where no chromium is installed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ackbot.client import Client
from ackbot.testing import wait_until
from tests.support.gated_responder import GATE_ENV, GATED

from .conftest import Failed, call
from .test_browser import WITHIN, post


async def open_thread(new_page: Any, url: str) -> tuple[Any, Any]:
    page, watch = await new_page()
    await page.goto(url)
    await page.wait_for_selector(".ackbot-live")  # listed, and watching
    return page, watch


async def own_keys(page: Any, thread: str) -> dict[str, Any]:
    stored = await page.evaluate(f"localStorage.getItem('ackbot-own:{thread}')")
    return dict(json.loads(stored or "{}"))


async def test_the_writer_deletes_their_comment_and_it_leaves_every_page_live(
    store, start_bot, start_web, new_page
):
    await start_bot()
    web = await start_web()
    writer, watch = await open_thread(new_page, f"{web.url}/demo/own-delete")
    reader, _ = await open_thread(new_page, f"{web.url}/demo/own-delete")
    await post(reader, "bo", "A reader's comment")
    await post(writer, "ana", "Mine, to take back")
    for page in (writer, reader):
        await page.locator(".ackbot-reply").nth(1).wait_for(timeout=WITHIN)

    mine = writer.locator(".ackbot-comment", has_text="Mine, to take back")
    theirs = writer.locator(".ackbot-comment", has_text="A reader's comment")
    # Controls under one's own comment only, in one's own browser only.
    assert await mine.locator(".ackbot-delete").count() == 1
    assert await mine.locator(".ackbot-edit").count() == 1
    assert await theirs.locator(".ackbot-delete").count() == 0
    assert (
        await reader.locator(".ackbot-comment", has_text="Mine, to take back")
        .locator(".ackbot-delete")
        .count()
        == 0
    )
    reader_own = reader.locator(".ackbot-comment", has_text="A reader's comment")
    assert await reader_own.locator(".ackbot-delete").count() == 1

    await mine.locator(".ackbot-delete").click()
    for page in (writer, reader):
        gone = page.locator(".ackbot-comment", has_text="Mine, to take back")
        await gone.wait_for(state="detached", timeout=WITHIN)
        # Its reply went with it; the other comment and its reply stay.
        await page.locator(".ackbot-reply").nth(1).wait_for(state="detached", timeout=WITHIN)
        assert await page.locator(".ackbot-comment").count() == 1
        assert await page.locator(".ackbot-reply").count() == 1
    # A reload shows the same: it is gone for good.
    await reader.reload()
    await reader.wait_for_selector(".ackbot-live")
    assert await reader.locator(".ackbot-comment > .ackbot-body").all_inner_texts() == [
        "A reader's comment"
    ]
    assert not watch.errors


async def test_the_server_refuses_a_key_that_is_not_the_comments(store, start_web, new_page):
    web = await start_web()
    writer, _ = await open_thread(new_page, f"{web.url}/demo/not-yours")
    other, _ = await open_thread(new_page, f"{web.url}/demo/not-yours")
    await post(writer, "ana", "Written by ana")
    await post(other, "bo", "Written by bo")
    await writer.locator(".ackbot-comment").nth(1).wait_for(timeout=WITHIN)
    ana = await own_keys(writer, "demo:not-yours")
    bo = await own_keys(other, "demo:not-yours")
    (ana_id,) = ana
    (bo_id,) = bo
    # bo's browser tries ana's comment with its own key, and with none: both refused.
    for key in (bo[bo_id]["key"], ""):
        with pytest.raises(Failed) as refused:
            await call(web.url, "DeleteComment", {"id": ana_id, "editKey": key})
        assert refused.value.code == "permission_denied"
    # The same refusal reaches a page that forges its storage: shown under the comment.
    forged = {ana_id: {"key": bo[bo_id]["key"], "until": time.time() * 1000 + 60_000}}
    await other.evaluate(
        "([k, v]) => localStorage.setItem(k, v)", ["ackbot-own:demo:not-yours", json.dumps(forged)]
    )
    await other.reload()
    await other.wait_for_selector(".ackbot-live")
    target = other.locator(".ackbot-comment", has_text="Written by ana")
    await target.locator(".ackbot-delete").click()
    refusal = target.locator(".ackbot-own-error", has_text="not this comment's")
    await refusal.wait_for(timeout=WITHIN)
    assert (await refusal.inner_text()).startswith("Not done:")
    assert await writer.locator(".ackbot-comment").count() == 2
    listed = await call(web.url, "ListThread", {"thread": "demo:not-yours"})
    assert len(listed["comments"]) == 2


async def test_the_controls_go_when_the_window_ends_and_the_server_agrees(
    store, start_web, new_page
):
    web = await start_web("--edit-window-seconds", "3")
    page, _ = await open_thread(new_page, f"{web.url}/demo/window")
    await post(page, "ana", "Quick, take it back")
    delete = page.locator(".ackbot-comment .ackbot-delete")
    await delete.wait_for(timeout=WITHIN)
    keys = await own_keys(page, "demo:window")
    (comment_id,) = keys
    # No click: the widget takes the controls away on its own when the window ends.
    await delete.wait_for(state="detached", timeout=WITHIN)
    await page.reload()
    await page.wait_for_selector(".ackbot-live")
    assert await page.locator(".ackbot-comment").count() == 1
    assert await page.locator(".ackbot-delete").count() == 0
    # And the server refuses the key now, should a page try anyway.
    _, expires, _ = keys[comment_id]["key"].split(".")
    await wait_until(lambda: time.time() >= int(expires), 5, what="the server's window end")
    with pytest.raises(Failed) as refused:
        await call(web.url, "DeleteComment", {"id": comment_id, "editKey": keys[comment_id]["key"]})
    assert refused.value.code == "failed_precondition"


async def test_the_writer_edits_and_the_bot_answers_the_new_text(
    store, start_bot, start_web, new_page, tmp_path
):
    gate = tmp_path / "gate"
    await start_bot(responder=GATED, env={GATE_ENV: str(gate)})
    web = await start_web()
    writer, watch = await open_thread(new_page, f"{web.url}/demo/own-edit")
    reader, _ = await open_thread(new_page, f"{web.url}/demo/own-edit")
    await post(writer, "ana", "Helo wrld")
    await writer.wait_for_selector(".ackbot-writing", timeout=WITHIN)
    await writer.locator(".ackbot-edit").click()
    await writer.fill(".ackbot-edit-text", "Hello world")
    # The bot answers the old text while the writer edits: the editor keeps what was typed.
    gate.touch()
    await reader.locator(".ackbot-reply").wait_for(timeout=WITHIN)
    assert await writer.locator(".ackbot-edit-text").input_value() == "Hello world"
    await writer.click(".ackbot-save")
    for page in (writer, reader):
        await page.locator(".ackbot-comment > .ackbot-body", has_text="Helo wrld").wait_for(
            state="detached", timeout=WITHIN
        )
        edited = page.locator(".ackbot-comment", has_text="Hello world")
        await edited.locator(".ackbot-reply").wait_for(timeout=WITHIN)
        assert await page.locator(".ackbot-comment").count() == 1
        assert await page.locator(".ackbot-reply").count() == 1
    # The new comment is the writer's to delete or edit again.
    assert await writer.locator(".ackbot-comment .ackbot-delete").count() == 1
    assert await reader.locator(".ackbot-comment .ackbot-delete").count() == 0
    assert not watch.errors


async def test_a_held_comment_is_seen_by_its_writer_only_then_by_everyone_once_approved(
    store, start_bot, start_web, new_page
):
    await start_bot()
    web = await start_web("--hold-comments")
    writer, _ = await open_thread(new_page, f"{web.url}/demo/held")
    reader, _ = await open_thread(new_page, f"{web.url}/demo/held")
    await post(writer, "ana", "Wait for the moderator")
    held = writer.locator(".ackbot-comment", has_text="Wait for the moderator")
    await held.locator(".ackbot-held", has_text="awaiting moderation").wait_for(timeout=WITHIN)
    (comment_id,) = await own_keys(writer, "demo:held")
    # The writer still sees it after a reload (the key is kept); a fresh reader sees nothing.
    await writer.reload()
    await writer.wait_for_selector(".ackbot-live")
    await held.locator(".ackbot-held").wait_for(timeout=WITHIN)
    stranger, _ = await open_thread(new_page, f"{web.url}/demo/held")
    for page in (reader, stranger):
        assert await page.locator(".ackbot-comment").count() == 0
    assert (await call(web.url, "ListThread", {"thread": "demo:held"})).get("comments", []) == []

    async with Client.connect(store.address) as moderator:  # a store that checks no roles
        await moderator.approve(comment_id)
    for page in (reader, stranger, writer):
        shown = page.locator(".ackbot-comment", has_text="Wait for the moderator")
        await shown.locator(".ackbot-reply").wait_for(timeout=WITHIN)
        assert await shown.locator(".ackbot-held").count() == 0
        assert await page.locator(".ackbot-comment").count() == 1
