"""The guard: who a request comes from, how often an address may post, and which sites may
embed the comments.

The address is the TCP peer's, except behind a reverse proxy the operator names
(--trusted-proxies): then it is the last X-Forwarded-For entry not added by one of those
proxies. A header from anyone else is ignored, so nobody picks their own address.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ackbot.web.config import Network


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The address a request is attributed to (see the module docstring)."""
    host = _host(peer or "")
    if not trusted or not forwarded_for or not _in(host, trusted):
        return host or "unknown"
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else host


def _host(peer: str) -> str:
    """The host of "HOST:PORT" or "[V6]:PORT" (connectrpc's client_address)."""
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else peer


def _in(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def token_matches(authorization: str | None, token: str | None) -> bool:
    """True when `authorization` is `Bearer TOKEN` (compared in constant time)."""
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per address: `per_minute` posts, refilled evenly, `per_minute` at once
    at most. Full buckets are forgotten once there are many, so memory stays bounded by the
    addresses seen within a minute or so."""

    MAX_TRACKED = 100_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, address: str) -> float:
        """0.0 when `address` may post now (and counts it), else the seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        rate = self.per_minute / 60.0
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.MAX_TRACKED:
                self._forget_full(now, rate)
            bucket = self._buckets[address] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _forget_full(self, now: float, rate: float) -> None:
        full = [
            address
            for address, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * rate >= self.per_minute
        ]
        for address in full:
            del self._buckets[address]


class WatchCounter:
    """Open WatchThread streams per address, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def enter(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)


def seconds_text(seconds: float) -> str:
    return f"{math.ceil(seconds)} s"
