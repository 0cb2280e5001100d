"""The guard's rules without a server: the address a request is counted under, the token
bucket per address, the site token, the allowed origins."""

from __future__ import annotations

import ipaddress

import pytest

from ackbot.web.config import network_list, origin_list
from ackbot.web.guard import RateLimiter, WatchCounter, client_address, token_matches

PROXY = network_list("10.0.0.0/8, ::1")


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("192.0.2.7:5555", None, PROXY, "192.0.2.7"),
        # Not from a named proxy: the header is the client's own claim, ignored.
        ("192.0.2.7:5555", "198.51.100.1", PROXY, "192.0.2.7"),
        ("192.0.2.7:5555", "198.51.100.1", (), "192.0.2.7"),
        # From a named proxy: the last address it did not add.
        ("10.1.2.3:5555", "198.51.100.1", PROXY, "198.51.100.1"),
        ("10.1.2.3:5555", "203.0.113.9, 198.51.100.1", PROXY, "198.51.100.1"),
        ("10.1.2.3:5555", "198.51.100.1, 10.9.9.9", PROXY, "198.51.100.1"),
        ("[::1]:5555", "2001:db8::1", PROXY, "2001:db8::1"),
        # Only proxies on the way: the first one.
        ("10.1.2.3:5555", "10.4.4.4", PROXY, "10.4.4.4"),
    ],
)
def test_client_address(peer, forwarded, trusted, expected):
    assert client_address(peer, forwarded, trusted) == expected


def test_the_bucket_allows_a_burst_then_one_per_interval():
    now = [100.0]
    limiter = RateLimiter(6, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(10.0)  # 6 a minute: one every 10 s
    assert limiter.take("b") == 0.0  # another address has its own bucket
    now[0] += 10.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert RateLimiter(0).take("a") == 0.0  # 0: no limit


def test_watches_per_address():
    watches = WatchCounter(2)
    assert watches.enter("a")
    assert watches.enter("a")
    assert not watches.enter("a")
    assert watches.enter("b")
    watches.leave("a")
    assert watches.enter("a")


def test_site_token():
    assert token_matches("Bearer s3cret", "s3cret")
    assert token_matches("bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret")
    assert not token_matches("Basic s3cret", "s3cret")
    assert not token_matches(None, "s3cret")
    assert not token_matches("Bearer ", None)


def test_origins_and_networks_are_checked():
    assert origin_list("https://Blog.example, http://localhost:3000") == (
        "https://blog.example",
        "http://localhost:3000",
    )
    for bad in ("blog.example", "https://blog.example/path", "ftp://x"):
        with pytest.raises(ValueError, match="not an origin"):
            origin_list(bad)
    assert network_list("10.0.0.1") == (ipaddress.ip_network("10.0.0.1/32"),)
