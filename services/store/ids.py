"""Server-assigned message ids: unique and time-sortable (the ULID layout).

48 bits of milliseconds then 80 random bits, in Crockford base32: 26 characters, all inside the
id alphabet. Ids sort by creation time only roughly (clocks differ between store processes);
delivery order never depends on them, it is the store's sequence. Lease tokens and store ids
are random and carry no time.
"""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_message_id(now_ns: int) -> str:
    """An id for a message received at `now_ns` (the store's clock)."""
    millis = now_ns // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_lease_token() -> str:
    return secrets.token_hex(16)


def new_store_id() -> str:
    """Names one store process for as long as it runs: its row in the registry, its leases
    (`messages.owner_store`) and the payload of its notifications; random, short to read."""
    return secrets.token_hex(8)
