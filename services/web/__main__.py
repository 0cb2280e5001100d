"""`ackbot-web`: the comment section's web front door (docs/operations.md, "The web front door").

A stateless process: it keeps nothing but its one watch on the store, so more of them behind a
load balancer serve more readers. Served by uvicorn (HTTP/1.1; TLS and HTTP/2 are the reverse
proxy's). On SIGTERM or Ctrl-C every open WatchThread stream ends at once (UNAVAILABLE: the
widget watches again, elsewhere), the calls in flight get --grace-seconds, then it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence

import uvicorn
from prometheus_client import CollectorRegistry

from ackbot.client import Client
from ackbot.common.logs import configure_logging
from ackbot.common.metrics import MetricsServer
from ackbot.common.serving import format_address, split_host_port
from ackbot.web.app import Receive, Scope, Send, WebApp
from ackbot.web.config import WebConfig, load_config
from ackbot.web.editkeys import EditKeys, random_secret
from ackbot.web.hub import Hub
from ackbot.web.metrics import WebMetrics
from ackbot.web.service import CommentService
from ackbot.web.v1.comments_connect import CommentServiceASGIApplication

log = logging.getLogger("ackbot.web")

# A browser waits on a call this long at most while the store is unreachable, then is told so.
STORE_RETRY_BUDGET_SECONDS = 5.0
# Largest request body: a comment at the largest --max-text-bytes, its name and thread, as JSON.
READ_MAX_BYTES = 64 * 1024


class _Server(uvicorn.Server):
    """uvicorn's server, with our signal handling instead of its own: uvicorn waits for every
    open connection before it stops, and a watch never ends on its own, so a stop first ends
    the open watches; and uvicorn re-raises the signal once stopped, so a clean stop would exit
    -15 where the other services exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _on_signals(server: _Server, holder: _Holder) -> None:
    loop = asyncio.get_running_loop()

    def stop(signum: signal.Signals) -> None:
        if holder.hub is not None:
            holder.hub.close()
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: stop now
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)


def build(config: WebConfig, registry: CollectorRegistry) -> tuple[WebApp, _Holder]:
    """The application; its store client and hub are made at startup, in the serving loop."""
    metrics = WebMetrics(registry)
    holder = _Holder()

    async def startup() -> None:
        client = Client.connect(
            config.store,
            ca=config.store_ca,
            cert=config.store_cert,
            key=config.store_key,
            token=config.store_token,
            retry_budget_seconds=STORE_RETRY_BUDGET_SECONDS,
        )
        # Only DeleteMessage uses the admin token: every other call, the hub's watch included,
        # stays on the producer's.
        deleter = (
            Client.connect(
                config.store,
                ca=config.store_ca,
                cert=config.store_cert,
                key=config.store_key,
                token=config.store_admin_token,
                retry_budget_seconds=STORE_RETRY_BUDGET_SECONDS,
            )
            if config.store_admin_token
            else None
        )
        if config.edit_secret is None and config.edit_window_seconds > 0:
            log.warning(
                "no --edit-secret-file: commenters' edit keys are good on this process only; "
                "give every front door of the site the same secret"
            )
        keys = EditKeys(config.edit_secret or random_secret())
        hub = Hub(client, metrics)
        holder.client, holder.hub, holder.deleter = client, hub, deleter
        holder.service = CommentService(client, hub, config, metrics, keys=keys, deleter=deleter)
        holder.task = asyncio.create_task(hub.run(), name="store-watch")

    async def shutdown() -> None:
        if holder.hub is not None:
            holder.hub.close()
        if holder.task is not None:
            holder.task.cancel()
        if holder.client is not None:
            await holder.client.close()
        if holder.deleter is not None:
            await holder.deleter.close()

    app = WebApp(
        holder.api,
        allowed_origins=config.allowed_origins,
        metrics=metrics,
        is_serving=lambda: holder.hub is not None and holder.hub.connected.is_set(),
        lifespan=startup,
        shutdown=shutdown,
    )
    return app, holder


class _Holder:
    """What startup makes; the API is built on its first call (it needs the service)."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.deleter: Client | None = None
        self.hub: Hub | None = None
        self.service: CommentService | None = None
        self.task: asyncio.Task[None] | None = None
        self._app: CommentServiceASGIApplication | None = None

    async def api(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            assert self.service is not None, "an API call before startup"
            self._app = CommentServiceASGIApplication(self.service, read_max_bytes=READ_MAX_BYTES)
        await self._app(scope, receive, send)


async def serve(config: WebConfig) -> None:
    registry = CollectorRegistry()
    app, holder = build(config, registry)
    metrics_server = (
        MetricsServer(registry, config.metrics_listen) if config.metrics_listen else None
    )
    if metrics_server is not None:
        metrics_server.start()
    host, port = split_host_port(config.listen)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    uv_config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is the guard's, for the proxies the operator names
        server_header=False,
        timeout_graceful_shutdown=int(config.grace_seconds) or None,
    )
    server = _Server(uv_config)
    _on_signals(server, holder)

    async def announce() -> None:
        # uvicorn says nothing once it serves; its `started` is a plain flag, so poll it.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        bound = format_address(host, sock.getsockname()[1])
        log.info("listening on %s (store %s)", bound, config.store)

    announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        if metrics_server is not None:
            metrics_server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("ackbot-web failed to start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
