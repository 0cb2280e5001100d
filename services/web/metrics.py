"""The web front door's Prometheus metrics, in a registry made per process (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WebMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ackbot_web_requests",
            "API calls answered, by method and Connect code",
            ("method", "code"),
            registry=registry,
        )
        self.handling = Histogram(
            "ackbot_web_handling_seconds",
            "time from an API call to its answer (unary calls)",
            ("method",),
            registry=registry,
        )
        self.viewers = Gauge(
            "ackbot_web_viewers", "WatchThread streams open now", registry=registry
        )
        self.viewers_dropped = Counter(
            "ackbot_web_viewers_dropped",
            "WatchThread streams ended because the reader fell too far behind",
            registry=registry,
        )
        self.store_watch_up = Gauge(
            "ackbot_web_store_watch_up",
            "1 while the process's one store watch (WatchMessages) is open",
            registry=registry,
        )
        self.rate_limited = Counter(
            "ackbot_web_rate_limited",
            "calls refused by the per-address limits, by what was limited",
            ("limit",),
            registry=registry,
        )
        self.origins_refused = Counter(
            "ackbot_web_origins_refused",
            "requests refused because their Origin is not allowed to embed the comments",
            registry=registry,
        )
        # Someone trying keys on others' comments shows here before anywhere else.
        self.edit_keys_refused = Counter(
            "ackbot_web_edit_keys_refused",
            "DeleteComment and EditComment calls refused for an edit_key not the comment's",
            registry=registry,
        )
