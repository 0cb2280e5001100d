"""Channels to the stores, from plain arguments: addresses, TLS files and a token.

One channel per store rather than one gRPC channel over several addresses (`ipv4:a:1,b:2` with
pick_first or round_robin): such targets take IP literals only, and a consumer must know which
store a stream and each settle went to, to prefer the stream's own store and to say so in its
logs (see retry.py for the failover rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration

from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, REPLY_LIMIT_METADATA
from ackbot.common.serving import client_credentials

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # gRPC's own reconnect backoff defaults to 1 s growing to 120 s; calls fail fast while it
    # waits, so a store that comes back would stay unused for up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Pings notice a store whose network vanished without a FIN, so the stream breaks and is
    # re-established instead of hanging. The store permits pings every 5 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # The store packs stream responses to about 1 MiB, but one delivery is as large as the
    # store's --max-text-bytes allows, which may be set past gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """Must run inside the event loop that will use the channel. `credentials` (see
    `Stores.credentials`) carry TLS and the token; None: plaintext, no token."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


@dataclass(frozen=True)
class Stores:
    """Where a consumer's stores are and how to reach them: stores of one database, in
    failover order. TLS when `ca` is given (mutual with `cert` and `key`); `token` as the bearer
    token on every call (a token goes to a non-loopback address only over TLS)."""

    addresses: Sequence[str]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = None
    # The flag prefix errors name (the bot's are --store-ca and so on).
    flags: str = "--tls"

    def credentials(self, target: str) -> grpc.ChannelCredentials | None:
        return client_credentials(
            target, ca=self.ca, cert=self.cert, key=self.key, token=self.token, flags=self.flags
        )

    def open(self) -> dict[str, grpc.aio.Channel]:
        """A channel per store, by address; must run inside the event loop that will use
        them."""
        if not self.addresses:
            raise ValueError("no store to connect to")
        return {
            address: open_channel(address, self.credentials(address)) for address in self.addresses
        }


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def reply_limit(headers: grpc.aio.Metadata | None) -> int:
    """The store's text limit from a stream's initial metadata; a store too old to send it
    enforces the contract's default."""
    value = headers.get(REPLY_LIMIT_METADATA) if headers is not None else None
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return DEFAULT_MAX_TEXT_BYTES
