"""A commenter's own delete and edit within the window, and the moderation hold, over HTTP/1.1
with JSON (as curl and a site's backend call them), against a real store, bot and ackbot-web:
the key proves the comment is the caller's and nobody else's key works, the window ends, front
doors with one secret agree, an edit is a new comment the bot answers, a held comment is its
author's alone until approved, then everyone's, live."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ackbot.client import Client
from ackbot.testing import wait_until

from .conftest import Failed, call, watch_frames

WITHIN = 20.0
DELETED = "COMMENT_STATE_DELETED"
HELD = "COMMENT_STATE_HELD"
SECRET = "0123456789abcdef" * 4


class Watcher:
    """A WatchThread call in a thread of its own: the comments it got, as they come."""

    def __init__(self, url: str, thread: str) -> None:
        self.comments: list[dict[str, Any]] = []
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, thread), daemon=True)
        self._thread.start()

    def _run(self, url: str, thread: str) -> None:
        for _, frame in watch_frames(url, {"thread": thread}):
            self.opened.set()
            if self._stop.is_set():
                return
            if "comment" in frame:
                self.comments.append(frame["comment"])

    def seen(self, **fields: Any) -> bool:
        return any(all(c.get(k) == v for k, v in fields.items()) for c in self.comments)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for watcher in made:
        watcher.stop()


async def watch(url: str, thread: str, made: list[Watcher]) -> Watcher:
    watcher = Watcher(url, thread)
    made.append(watcher)
    await wait_until(watcher.opened.is_set, WITHIN, what="the watch open")
    return watcher


async def post(url: str, thread: str, text: str, author: str = "ana", **headers: str) -> Any:
    return await call(
        url, "PostComment", {"thread": thread, "author": author, "text": text}, headers
    )


async def listed(url: str, thread: str, own: list[dict[str, str]] | None = None) -> Any:
    return await call(url, "ListThread", {"thread": thread, "ownComments": own or []})


async def answered(url: str, thread: str, comment_id: str) -> dict[str, Any]:
    async def reply() -> dict[str, Any] | None:
        for comment in (await listed(url, thread)).get("comments", []):
            if comment["id"] == comment_id and comment.get("reply"):
                return dict(comment)
        return None

    return await wait_until(reply, WITHIN, 0.1, what=f"{comment_id} answered")


async def test_the_writer_deletes_their_comment_and_its_reply_and_watchers_see_both_go(
    store, start_bot, start_web, watchers
):
    await start_bot()
    web = await start_web()
    posted = await post(web.url, "del", "Hello")
    comment_id, key = posted["comment"]["id"], posted["editKey"]
    assert key.startswith("v1.")
    expires = posted["editExpireTime"]
    assert expires > posted["comment"]["createTime"]  # RFC 3339, both UTC: they sort as text
    reply_id = (await answered(web.url, "del", comment_id))["reply"]["id"]
    watcher = await watch(web.url, "del", watchers)

    deleted = await call(web.url, "DeleteComment", {"id": comment_id, "editKey": key})
    assert not deleted.get("alreadyDeleted")
    await wait_until(
        lambda: (
            watcher.seen(id=comment_id, state=DELETED)
            and watcher.seen(id=reply_id, state=DELETED, fromBot=True)
        ),
        WITHIN,
        what="the watcher told of the comment's and the reply's deletion",
    )
    assert (await listed(web.url, "del")).get("comments", []) == []
    # A retried delete is OK, and says so.
    again = await call(web.url, "DeleteComment", {"id": comment_id, "editKey": key})
    assert again["alreadyDeleted"] is True


async def test_nobody_deletes_another_writers_comment(store, start_web):
    web = await start_web()
    mine = await post(web.url, "others", "Mine", author="ana")
    theirs = await post(web.url, "others", "Theirs", author="bo")
    target = theirs["comment"]["id"]
    version, expires, mac = mine["editKey"].split(".")
    attempts = [
        ({"id": target}, "edit_key is required"),
        ({"id": target, "editKey": mine["editKey"]}, "not this comment's"),  # my key, their id
        ({"id": target, "editKey": f"{version}.{int(expires) + 3600}.{mac}"}, "not this comment's"),
        ({"id": target, "editKey": "v1.99999999999.AAAA"}, "not this comment's"),
    ]
    for body, problem in attempts:
        with pytest.raises(Failed) as refused:
            await call(web.url, "DeleteComment", body)
        assert refused.value.status == 403
        assert refused.value.code == "permission_denied"
        assert problem in refused.value.message
        with pytest.raises(Failed) as refused:
            await call(web.url, "EditComment", {**body, "text": "rewritten"})
        assert refused.value.code == "permission_denied"
    texts = [c["text"] for c in (await listed(web.url, "others"))["comments"]]
    assert texts == ["Mine", "Theirs"]


async def test_nothing_is_deleted_after_the_window(store, start_web):
    web = await start_web("--edit-window-seconds", "1")
    posted = await post(web.url, "late", "Too late to take back")
    assert (await listed(web.url, "late"))["limits"]["editWindowSeconds"] == 1
    _, expires, _ = posted["editKey"].split(".")
    await wait_until(lambda: time.time() >= int(expires), 5, what="the window's end")
    body = {"id": posted["comment"]["id"], "editKey": posted["editKey"]}
    for method, extra in (("DeleteComment", {}), ("EditComment", {"text": "changed"})):
        with pytest.raises(Failed) as refused:
            await call(web.url, method, {**body, **extra})
        assert refused.value.code == "failed_precondition"
        assert "too late" in refused.value.message
    assert [c["text"] for c in (await listed(web.url, "late"))["comments"]] == [
        "Too late to take back"
    ]


async def test_front_doors_with_one_secret_agree_on_keys_and_others_do_not(
    store, start_web, tmp_path
):
    secret = tmp_path / "edit-secret"
    secret.write_text(SECRET + "\n")
    first = await start_web("--edit-secret-file", str(secret), name="web-a")
    second = await start_web("--edit-secret-file", str(secret), name="web-b")
    stranger = await start_web(name="web-random")  # no secret: a random one of its own
    one = await post(first.url, "farm", "One")
    two = await post(first.url, "farm", "Two")
    with pytest.raises(Failed) as refused:
        await call(
            stranger.url, "DeleteComment", {"id": one["comment"]["id"], "editKey": one["editKey"]}
        )
    assert refused.value.code == "permission_denied"
    await call(second.url, "DeleteComment", {"id": one["comment"]["id"], "editKey": one["editKey"]})
    assert [c["text"] for c in (await listed(first.url, "farm"))["comments"]] == ["Two"]
    assert two["comment"]["id"]


async def test_a_secret_too_short_is_refused_at_start(store, start_web, tmp_path):
    secret = tmp_path / "short"
    secret.write_text("hunter2\n")
    with pytest.raises(Exception, match="at least 32 characters"):
        await start_web("--edit-secret-file", str(secret))


async def test_an_edit_replaces_the_comment_and_the_bot_answers_the_new_text(
    store, start_bot, start_web, watchers
):
    await start_bot()
    web = await start_web()
    posted = await post(web.url, "edit", "Helo")
    old_id = posted["comment"]["id"]
    old_reply = (await answered(web.url, "edit", old_id))["reply"]
    watcher = await watch(web.url, "edit", watchers)

    body = {"id": old_id, "editKey": posted["editKey"], "text": "Hello, fixed"}
    edited = await call(web.url, "EditComment", body)
    new = edited["comment"]
    assert new["id"] != old_id
    assert (new["author"], new["text"], new["thread"]) == ("ana", "Hello, fixed", "edit")
    # Editing does not extend the window.
    assert edited["editExpireTime"] == posted["editExpireTime"]
    assert edited["editKey"].split(".")[1] == posted["editKey"].split(".")[1]
    answer = (await answered(web.url, "edit", new["id"]))["reply"]
    assert answer["id"] != old_reply["id"]
    await wait_until(
        lambda: (
            watcher.seen(id=old_id, state=DELETED)
            and watcher.seen(id=old_reply["id"], state=DELETED)
            and watcher.seen(id=new["id"], text="Hello, fixed")
        ),
        WITHIN,
        what="the watcher told of the old comment going and the new one coming",
    )
    shown = (await listed(web.url, "edit"))["comments"]
    assert [(c["id"], c["text"]) for c in shown] == [(new["id"], "Hello, fixed")]
    # A retried edit (its answer lost) finds the new comment: stored once.
    again = await call(web.url, "EditComment", body)
    assert again["comment"]["id"] == new["id"]
    # The old comment is gone: editing it to another text is refused.
    with pytest.raises(Failed) as refused:
        await call(web.url, "EditComment", {**body, "text": "Third try"})
    assert refused.value.code == "not_found"
    # The new comment's key edits or deletes it.
    await call(web.url, "DeleteComment", {"id": new["id"], "editKey": edited["editKey"]})
    assert (await listed(web.url, "edit")).get("comments", []) == []


async def test_a_held_comment_is_its_writers_alone_until_approved_then_everyones_live(
    store, start_bot, start_web, watchers, tmp_path
):
    await start_bot()
    site_token = tmp_path / "site-token"
    site_token.write_text("site-backend-token\n")
    web = await start_web("--hold-comments", "--site-token-file", str(site_token))
    watcher = await watch(web.url, "held", watchers)
    posted = await post(web.url, "held", "Please approve me")
    comment = posted["comment"]
    assert comment["state"] == HELD
    own = [{"id": comment["id"], "editKey": posted["editKey"]}]
    # The site's backend vouches for its posts: not held; and it shows the watch is live.
    vouched = await post(
        web.url, "held", "From the site", author="site", Authorization="Bearer site-backend-token"
    )
    await wait_until(
        lambda: watcher.seen(id=vouched["comment"]["id"]), WITHIN, what="the site's comment"
    )
    await answered(web.url, "held", vouched["comment"]["id"])

    # Nobody else sees the held one: not in the list, not on the watch, not with a wrong key.
    public = await listed(web.url, "held")
    assert [c["author"] for c in public["comments"]] == ["site"]
    assert not public.get("heldComments")
    assert not watcher.seen(id=comment["id"])
    forged = [{"id": comment["id"], "editKey": vouched["editKey"]}]
    assert not (await listed(web.url, "held", forged)).get("heldComments")
    # Its writer sees it, awaiting moderation.
    mine = await listed(web.url, "held", own)
    assert [(c["id"], c["state"]) for c in mine["heldComments"]] == [(comment["id"], HELD)]

    async with Client.connect(store.address) as admin:
        await admin.approve(comment["id"])
    await wait_until(
        lambda: watcher.seen(id=comment["id"], text="Please approve me"),
        WITHIN,
        what="the approved comment on the watch",
    )
    answered_now = await answered(web.url, "held", comment["id"])
    assert answered_now["reply"]["fromBot"] is True
    assert not (await listed(web.url, "held", own)).get("heldComments")


async def test_a_window_of_0_gives_no_keys_and_takes_none(store, start_web, tmp_path):
    secret = tmp_path / "edit-secret"
    secret.write_text(SECRET)
    on = await start_web("--edit-secret-file", str(secret), name="web-on")
    off = await start_web(
        "--edit-secret-file", str(secret), "--edit-window-seconds", "0", name="web-off"
    )
    assert "editKey" not in await post(off.url, "off", "No key for this one")
    assert (await listed(off.url, "off"))["limits"].get("editWindowSeconds", 0) == 0
    keyed = await post(on.url, "off", "A key from a front door that gives them")
    body = {"id": keyed["comment"]["id"], "editKey": keyed["editKey"]}
    with pytest.raises(Failed) as refused:
        await call(off.url, "DeleteComment", body)
    assert refused.value.code == "failed_precondition"
    assert "not enabled" in refused.value.message
