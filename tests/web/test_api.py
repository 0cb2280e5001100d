"""The public API over HTTP/1.1 with JSON, as curl and a site's backend call it, against a real
store, bot and ackbot-web: post, list with replies, watch live, the guard (limits, the site
token, X-Forwarded-For only from a named proxy, CORS), and one store watch per process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from ackbot.testing import wait_until
from tests.support.metrics_scrape import scrape, value

from .conftest import Failed, call, watch_frames

WITHIN = 20.0
ANSWERED = "COMMENT_STATE_ANSWERED"


async def test_post_then_list_shows_the_reply_under_its_comment(store, start_bot, start_web):
    await start_bot()
    web = await start_web()
    posted = await call(
        web.url, "PostComment", {"thread": "post-1", "author": "ana", "text": "Hello"}
    )
    assert posted["comment"]["state"] == "COMMENT_STATE_WAITING"
    assert posted["comment"]["thread"] == "post-1"

    async def answered() -> dict[str, Any] | None:
        listed = await call(web.url, "ListThread", {"thread": "post-1"})
        comments = listed.get("comments", [])
        return listed if comments and comments[0].get("reply") else None

    listed = await wait_until(answered, WITHIN, 0.1, what="the reply listed")
    assert listed is not None
    (comment,) = listed["comments"]
    assert comment["state"] == ANSWERED
    assert comment["text"] == "Hello"
    assert comment["reply"]["fromBot"] is True
    assert "ana" in comment["reply"]["text"]  # the persona greets the writer by name
    assert listed["limits"]["maxTextBytes"] == 4096
    # Another thread sees none of it.
    assert (await call(web.url, "ListThread", {"thread": "post-2"})).get("comments", []) == []


async def test_bad_input_names_the_field_and_the_limit(store, start_web):
    web = await start_web("--max-text-bytes", "20", "--max-author-chars", "5")
    cases = [
        ({"thread": "a/b", "author": "ana", "text": "x"}, "thread must be 1 to 120"),
        ({"thread": "t", "author": "", "text": "x"}, "author must be 1 to 5"),
        ({"thread": "t", "author": "ana-maria", "text": "x"}, "author must be 1 to 5"),
        ({"thread": "t", "author": "ana", "text": "é" * 11}, "text is 22 bytes; the limit is 20"),
        ({"thread": "t", "author": "ana", "text": "  "}, "text must not be empty"),
        ({"thread": "t", "author": "ana", "text": "a\x00b"}, "control characters"),
    ]
    for body, expected in cases:
        with pytest.raises(Failed) as caught:
            await call(web.url, "PostComment", body)
        assert caught.value.status == 400, body
        assert caught.value.code == "invalid_argument"
        assert expected in caught.value.message, (body, caught.value.message)
    # Nothing was stored.
    assert (await call(web.url, "ListThread", {"thread": "t"})).get("comments", []) == []


async def test_rate_limit_per_address_and_the_site_token_lifts_it(store, start_web, tmp_path):
    token = tmp_path / "site-token"
    token.write_text("s3cret\n")
    web = await start_web("--posts-per-minute", "2", "--site-token-file", str(token))
    body = {"thread": "busy", "author": "ana", "text": "hi"}
    await call(web.url, "PostComment", body)
    await call(web.url, "PostComment", body)
    with pytest.raises(Failed) as caught:
        await call(web.url, "PostComment", body)
    assert caught.value.status == 429
    assert caught.value.code == "resource_exhausted"
    assert "at most 2 a minute" in caught.value.message
    # A wrong token is no token.
    with pytest.raises(Failed):
        await call(web.url, "PostComment", body, {"Authorization": "Bearer nope"})
    for _ in range(3):
        await call(web.url, "PostComment", body, {"Authorization": "Bearer s3cret"})
    listed = await call(web.url, "ListThread", {"thread": "busy"})
    assert len(listed["comments"]) == 5


async def test_forwarded_for_counts_only_from_a_named_proxy(store, start_web):
    # Not behind a named proxy: the header is ignored, every "address" is the peer's.
    plain = await start_web("--posts-per-minute", "1", name="web-plain")
    body = {"thread": "xff", "author": "ana", "text": "hi"}
    await call(plain.url, "PostComment", body, {"X-Forwarded-For": "198.51.100.1"})
    with pytest.raises(Failed):
        await call(plain.url, "PostComment", body, {"X-Forwarded-For": "198.51.100.2"})
    # Behind a named proxy (the tests' own loopback): each forwarded address has its own limit.
    proxied = await start_web(
        "--posts-per-minute", "1", "--trusted-proxies", "127.0.0.1", name="web-proxied"
    )
    await call(proxied.url, "PostComment", body, {"X-Forwarded-For": "198.51.100.1"})
    await call(proxied.url, "PostComment", body, {"X-Forwarded-For": "198.51.100.2"})
    with pytest.raises(Failed):
        # The client's own claim before the proxy's entry does not help it.
        await call(
            proxied.url, "PostComment", body, {"X-Forwarded-For": "203.0.113.9, 198.51.100.2"}
        )


async def test_cors_allows_listed_origins_and_refuses_others(store, start_web):
    web = await start_web("--allowed-origins", "https://blog.example")
    body = {"thread": "cors"}
    allowed = await asyncio.to_thread(_raw_call, web.url, body, "https://blog.example")
    assert allowed[0] == 200
    assert allowed[1].get("access-control-allow-origin") == "https://blog.example"
    refused = await asyncio.to_thread(_raw_call, web.url, body, "https://evil.example")
    assert refused[0] == 403
    assert "access-control-allow-origin" not in refused[1]
    # The front door's own pages are always allowed.
    own = await asyncio.to_thread(_raw_call, web.url, body, web.url)
    assert own[0] == 200


def _raw_call(url: str, body: dict[str, Any], origin: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"{url}/ackbot.web.v1.CommentService/ListThread",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Origin": origin},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


async def test_watchers_see_comments_and_replies_live_through_one_store_watch(
    store, start_bot, start_web
):
    await start_bot()
    web = await start_web()
    listed = await call(web.url, "ListThread", {"thread": "live"})
    seen: list[list[dict[str, Any]]] = [[] for _ in range(5)]
    stop = threading.Event()

    def watch(index: int) -> None:
        with contextlib.suppress(OSError):
            for _, frame in watch_frames(
                web.url, {"thread": "live", "afterSequence": listed.get("lastSequence", "0")}
            ):
                if "comment" in frame:  # not the first response, "the watch is open"
                    seen[index].append(frame["comment"])
                if stop.is_set():
                    return

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(5)]
    for thread in threads:
        thread.start()
    await call(web.url, "PostComment", {"thread": "live", "author": "ana", "text": "Hello"})
    await call(web.url, "PostComment", {"thread": "other", "author": "bo", "text": "elsewhere"})

    def every_watcher_saw_the_reply() -> bool:
        return all(any(c.get("reply") for c in comments) for comments in seen)

    await wait_until(every_watcher_saw_the_reply, WITHIN, what="5 watchers saw the reply")
    stop.set()
    for comments in seen:
        assert {c["thread"] for c in comments} == {"live"}
        assert {c["text"] for c in comments} == {"Hello"}
    # Five viewers, one WatchMessages on the store.
    watches = value(
        await scrape(store),
        "grpc_server_started_total",
        grpc_service="ackbot.v1.MessageStore",
        grpc_method="WatchMessages",
        grpc_type="server_stream",
    )
    assert watches == 1


async def test_a_stopping_front_door_ends_its_watches_and_exits_0(store, start_web):
    web = await start_web()
    frames: list[tuple[int, dict[str, Any]]] = []
    opened = threading.Event()

    def watch() -> None:
        for flags, frame in watch_frames(web.url, {"thread": "stop"}):
            frames.append((flags, frame))
            opened.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    await wait_until(opened.is_set, WITHIN, what="the watch is open")
    assert frames[0] == (0, {})  # the first response: the watch is open
    code = await asyncio.to_thread(web.terminate)
    assert code == 0, web.describe()
    await asyncio.to_thread(reader.join, WITHIN)
    flags, end = frames[-1]
    assert flags & 2  # the end of the stream, with its error
    assert end["error"]["code"] == "unavailable"


async def test_a_retried_post_with_its_request_id_is_stored_once(store, start_web):
    web = await start_web()
    body = {"thread": "retry", "author": "ana", "text": "Hello", "requestId": "a" * 16}
    first = await call(web.url, "PostComment", body)
    again = await call(web.url, "PostComment", body)
    assert again["comment"]["id"] == first["comment"]["id"]
    with pytest.raises(Failed) as caught:
        await call(web.url, "PostComment", {**body, "text": "Something else"})
    assert caught.value.code == "already_exists"
    assert "request_id" in caught.value.message
    with pytest.raises(Failed) as caught:
        await call(web.url, "PostComment", {**body, "requestId": "short"})
    assert caught.value.code == "invalid_argument"
    assert "request_id must be 16 to 64" in caught.value.message
    listed = await call(web.url, "ListThread", {"thread": "retry"})
    assert [c["text"] for c in listed["comments"]] == ["Hello"]


async def test_grpc_web_clients_are_served_too(store, start_web):
    web = await start_web()
    await call(web.url, "PostComment", {"thread": "gw", "author": "ana", "text": "Hello"})
    payload = json.dumps({"thread": "gw"}).encode()
    request = urllib.request.Request(
        f"{web.url}/ackbot.web.v1.CommentService/ListThread",
        data=b"\0" + struct.pack(">I", len(payload)) + payload,
        headers={"Content-Type": "application/grpc-web+json", "X-Grpc-Web": "1"},
        method="POST",
    )
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
    size = struct.unpack(">I", body[1:5])[0]
    message, trailer = json.loads(body[5 : 5 + size]), body[5 + size :]
    assert [c["text"] for c in message["comments"]] == ["Hello"]
    assert trailer[0] & 0x80  # the trailers frame
    assert b"grpc-status: 0" in trailer
