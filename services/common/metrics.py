"""Prometheus metrics shared by both services: the gRPC server metrics and the /metrics server.

The gRPC metrics keep go-grpc-prometheus's names and labels, so existing dashboards and alerts
work unchanged. py-grpc-prometheus has no grpc.aio interceptor (lchenn/py-grpc-prometheus#13),
so `MetricsInterceptor` is our own; it wraps each handler with one of the same kind, as
auth.py does, because an aio interceptor never sees a call's outcome otherwise.

Every metric lives in a CollectorRegistry made per server and passed down explicitly (no
import-time globals): several stores in one test process each count their own calls.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ackbot.common.flags import package_version
from ackbot.common.serving import format_address, split_host_port

log = logging.getLogger(__name__)

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = (
    "unary",
    "client_stream",
    "server_stream",
    "bidi_stream",
)


class GrpcServerMetrics:
    """go-grpc-prometheus's server metrics, in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started",
            "RPCs started on the server",
            _LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received",
            "messages received from clients",
            _LABELS,
            registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent",
            "messages sent to clients (each streamed response counts)",
            _LABELS,
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "time from the start of an RPC to its status",
            _LABELS,
            registry=registry,
        )
        # Started minus handled counts open streams only while both series exist and no
        # counter has reset; a gauge is what an alert on "no bot connected" can rely on.
        self.open_streams = Gauge(
            "ackbot_open_streams",
            "streaming calls open now, by method (a bot's Consume stream is one)",
            ("grpc_service", "grpc_method"),
            registry=registry,
        )
        build_info(registry)


def build_info(registry: CollectorRegistry) -> None:
    """`ackbot_build_info{version} 1`, the usual way to see which release each target runs."""
    info = Gauge(
        "ackbot_build_info",
        "always 1; the running release in its label",
        ("version",),
        registry=registry,
    )
    info.labels(package_version()).set(1)


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status a call ended with: the one set by abort() or set_code(), else OK, or
    UNKNOWN (CANCELLED when the client went away) for an escaping exception."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # grpc.aio keeps the raw integer in some versions
        for member in grpc.StatusCode:
            if member.value[0] == code:
                return member.name
    if error is None:
        return "OK"
    if isinstance(error, BaseException) and type(error).__name__ == "CancelledError":
        return "CANCELLED"
    return "UNKNOWN"


class _MethodMetrics:
    """One method's labelled children, resolved once: prometheus_client's labels() builds,
    hashes and locks on every call, a visible share of a small call's CPU (issue 22)."""

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]) -> None:
        self.started = metrics.started.labels(*labels)
        self.received = metrics.msg_received.labels(*labels)
        self.sent = metrics.msg_sent.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        _, service, name = labels
        self.open_streams = metrics.open_streams.labels(service, name)
        self._handled_family = metrics.handled
        self._labels = labels
        self._handled: dict[str, Counter] = {}

    def handled(self, code: str) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self._labels, code)
        return child


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call into `metrics` (see the module doc)."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics
        # Only methods the server serves get here (an unknown one has no handler): bounded.
        self._methods: dict[tuple[str, str], _MethodMetrics] = {}
        # The wrapped handler of each method, with the handler it wraps: the server hands the
        # same handler for every call of a method, so it is wrapped once, not per call (six
        # closures and a handler object: ~1.5 us a call, issue 22).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        kind = _kind_of(handler)
        counters = self._methods.get((method, kind))
        if counters is None:
            service, name = _split_method(method)
            counters = _MethodMetrics(self._metrics, (kind, service, name))
            self._methods[method, kind] = counters
        wrapped = _measured(handler, kind, counters)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _kind_of(handler: Any) -> str:
    if handler.unary_unary is not None:
        return UNARY
    if handler.stream_unary is not None:
        return CLIENT_STREAM
    if handler.unary_stream is not None:
        return SERVER_STREAM
    return BIDI_STREAM


def _measured(handler: Any, kind: str, counters: _MethodMetrics) -> grpc.RpcMethodHandler:
    received = counters.received
    sent = counters.sent

    streams = counters.open_streams

    def begin() -> float:
        counters.started.inc()
        return time.perf_counter()

    def end(context: grpc.aio.ServicerContext, began: float, error: BaseException | None) -> None:
        counters.handled(_code_of(context, error)).inc()
        counters.handling.observe(time.perf_counter() - began)

    async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            received.inc()
            yield request

    async def finish(result: Any) -> AsyncIterator[Any]:
        if inspect.isawaitable(result):  # a handler that writes with context.write()
            await result
            return
        async for response in result:
            sent.inc()
            yield response

    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if kind in (UNARY, CLIENT_STREAM):
        inner = handler.unary_unary if kind == UNARY else handler.stream_unary

        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = begin()
            if kind == UNARY:
                received.inc()
            else:
                request = counted(request)
            error: BaseException | None = None
            try:
                response = await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(context, began, error)
            sent.inc()
            return response

        make = (
            grpc.unary_unary_rpc_method_handler
            if kind == UNARY
            else grpc.stream_unary_rpc_method_handler
        )
        return make(single, **common)

    inner_stream = handler.unary_stream if kind == SERVER_STREAM else handler.stream_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        began = begin()
        streams.inc()
        if kind == SERVER_STREAM:
            received.inc()
        else:
            request = counted(request)
        error: BaseException | None = None
        try:
            counting = _CountingContext(context, sent.inc)
            async for response in finish(inner_stream(request, counting)):
                yield response
        except BaseException as exc:
            error = exc
            raise
        finally:
            streams.dec()
            end(context, began, error)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if kind == SERVER_STREAM
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(streaming, **common)


class _CountingContext:
    """A handler's context whose write() is counted: streaming handlers that send with
    context.write() instead of yielding (grpc's own health Watch) send messages too."""

    def __init__(self, context: grpc.aio.ServicerContext, on_write: Callable[[], None]) -> None:
        self._context = context
        self._on_write = on_write

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._on_write()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class MetricsServer:
    """prometheus_client's HTTP server for `registry` on HOST:PORT (port 0: a free one), in a
    thread of its own: a scrape only reads values already computed, never the event loop."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
        self._listen = listen
        self._httpd: Any = None
        self._thread: Any = None

    def start(self) -> str:
        """Serves and returns HOST:PORT with the port actually bound (OSError when it cannot)."""
        host, port = split_host_port(self._listen)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self._registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self._listen}: {exc.strerror or exc}") from exc
        address = format_address(host, self._httpd.server_address[1])
        # Tests that pass port 0 read the real port from this line.
        log.info("metrics on %s", address)
        return address

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
