"""The ASGI application: the public API (connectrpc's), the widget's files, /healthz, and the
CORS rule in front of all of them.

CORS: a browser sends `Origin` with each API call from a page. An allowed origin (listed in
--allowed-origins, or the front door's own) gets the Access-Control headers; any other is
refused with 403 before the call runs, so a page of a site that may not embed the comments can
neither read nor post (a POST with `Content-Type: application/json` is preflighted, and the
preflight is refused too). Calls without `Origin` (curl, a site's backend) pass: CORS guards
browsers' users, not the API.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from importlib import resources
from typing import Any

from ackbot.web.metrics import WebMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_PREFIX = "/ackbot.web.v1.CommentService/"
# The widget's pages run only their own files: no inline script or style, no other origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = {
    "/embed.js": ("embed.js", "text/javascript; charset=utf-8"),
    "/embed.css": ("embed.css", "text/css; charset=utf-8"),
}
ALLOWED_HEADERS = (
    "content-type, connect-protocol-version, connect-timeout-ms, authorization, "
    "x-grpc-web, x-user-agent, grpc-timeout"
)
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"


def _read_static(name: str) -> bytes:
    return resources.files("ackbot.web").joinpath("static", name).read_bytes()


class WebApp:
    def __init__(
        self,
        api: ASGIApp,
        *,
        allowed_origins: Iterable[str],
        metrics: WebMetrics,
        is_serving: Callable[[], bool],
        lifespan: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self._api = api
        self._allowed = frozenset(allowed_origins)
        self._metrics = metrics
        self._is_serving = is_serving
        self._startup = lifespan
        self._shutdown = shutdown
        # Read once: the files are part of the installed package.
        self._files = {path: (_read_static(name), kind) for path, (name, kind) in STATIC.items()}
        self._demo = _read_static("demo.html")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if path.startswith(API_PREFIX):
            cors: list[tuple[bytes, bytes]] = []
            if origin is not None:
                if not self._origin_allowed(origin, headers.get("host", "")):
                    self._metrics.origins_refused.inc()
                    await _send_json(
                        send,
                        403,
                        {
                            "code": "permission_denied",
                            "message": f"{origin} may not embed these comments",
                        },
                    )
                    return
                cors = [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin"),
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                ]
            if scope["method"] == "OPTIONS":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [
                            *cors,
                            (b"access-control-allow-methods", b"POST, GET"),
                            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                            (b"access-control-max-age", b"7200"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            await self._api(scope, receive, _with_headers(send, cors))
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send_bytes(send, 405, b"method not allowed\n", "text/plain; charset=utf-8")
            return
        if path == "/healthz":
            serving = self._is_serving()
            await _send_bytes(
                send,
                200 if serving else 503,
                b"SERVING\n" if serving else b"NOT_SERVING: no watch on the store\n",
                "text/plain; charset=utf-8",
            )
        elif path == "/favicon.ico":
            await _send_bytes(send, 204, b"", "image/x-icon")
        elif path in self._files:
            body, kind = self._files[path]
            # Any site may load the widget's own files; what it may call is the API's CORS.
            await _send_bytes(send, 200, body, kind, [(b"cache-control", b"public, max-age=300")])
        elif path == "/" or path.startswith("/demo/"):
            await _send_bytes(
                send,
                200,
                self._demo,
                "text/html; charset=utf-8",
                [(b"content-security-policy", PAGE_CSP.encode()), (b"cache-control", b"no-cache")],
            )
        else:
            await _send_bytes(send, 404, b"not found\n", "text/plain; charset=utf-8")

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.lower()
        if origin in self._allowed:
            return True
        # The front door's own pages (the demo): the origin names the host the request came to.
        _, _, netloc = origin.partition("://")
        return bool(host) and netloc == host.lower()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    if not extra:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _send_bytes(
    send: Send,
    status: int,
    body: bytes,
    kind: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, data: dict[str, str]) -> None:
    await _send_bytes(send, status, json.dumps(data).encode(), "application/json")
