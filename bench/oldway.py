"""The old way, modelled in-process: why ackbot exists, in figures.

The old comment system kept messages in a key-value store under keys built from the client's
timestamp, `msg:<create_ms>:<suffix>`, while the message id carried a timestamp taken 1-2 ms
apart. Rebuilding the key from the id therefore missed every time (the original bug). The fix
that followed listed keys by prefix, 1,000 a page as such stores return them, and scanned for the
id's suffix: a lookup costs a walk over half the keys on average, and the variant that read only
the first page (the shipped one) could not see any key past it.

The model keeps the keys sorted in memory, as the store's listing does, so its cost is the scan
alone, without any network: a lower bound on what the old lookups cost.
"""

from __future__ import annotations

import bisect
import random
import time
from dataclasses import dataclass

PAGE_SIZE = 1_000
PREFIX = "msg:"


class TimestampKeyStore:
    """Keys in order, listed a page at a time after a cursor (like S3's ListObjectsV2)."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = sorted(keys)

    def __contains__(self, key: str) -> bool:
        index = bisect.bisect_left(self._keys, key)
        return index < len(self._keys) and self._keys[index] == key

    def list_page(self, prefix: str, start_after: str = "") -> list[str]:
        start = bisect.bisect_right(self._keys, start_after or prefix)
        page = self._keys[start : start + PAGE_SIZE]
        return [key for key in page if key.startswith(prefix)]


@dataclass(frozen=True)
class OldMessage:
    id: str  # "<id_ms>-<suffix>"
    key: str  # "msg:<create_ms>:<suffix>", where create_ms is 1-2 ms off id_ms


def make_messages(count: int, rng: random.Random) -> list[OldMessage]:
    messages = []
    now_ms = 1_761_333_653_305
    for n in range(count):
        id_ms = now_ms + n * 3
        suffix = f"{rng.getrandbits(40):010x}"
        key = f"{PREFIX}{id_ms - rng.choice((1, 2))}:{suffix}"
        messages.append(OldMessage(f"{id_ms}-{suffix}", key))
    return messages


def rebuilt_key(message_id: str) -> str:
    """The original bug: the key rebuilt from the id's own timestamp."""
    id_ms, _, suffix = message_id.partition("-")
    return f"{PREFIX}{id_ms}:{suffix}"


def find_by_scan(store: TimestampKeyStore, message_id: str, *, max_pages: int = 0) -> str | None:
    """The fix: page through every key for the id's suffix (`max_pages` > 0 stops early, as
    the shipped version did after one page)."""
    wanted = ":" + message_id.partition("-")[2]
    cursor, pages = "", 0
    while page := store.list_page(PREFIX, cursor):
        for key in page:
            if key.endswith(wanted):
                return key
        pages += 1
        if max_pages and pages >= max_pages:
            return None
        cursor = page[-1]
    return None


@dataclass(frozen=True)
class SizeResult:
    size: int
    lookups: int
    scan_mean_ms: float
    first_page_miss_rate: float
    rebuilt_key_miss_rate: float


def measure(size: int, max_samples: int, budget_seconds: float, seed: int = 3) -> SizeResult:
    """Times full-scan lookups of random stored ids until `max_samples` or the time budget
    (at least 3), and counts what the two broken lookups miss among the same ids."""
    rng = random.Random(seed)
    messages = make_messages(size, rng)
    store = TimestampKeyStore([m.key for m in messages])
    picked: list[OldMessage] = []
    elapsed = 0.0
    while len(picked) < max_samples and (elapsed < budget_seconds or len(picked) < 3):
        message = rng.choice(messages)
        started = time.perf_counter()
        found = find_by_scan(store, message.id)
        elapsed += time.perf_counter() - started
        if found != message.key:
            raise AssertionError(f"the full scan lost {message.id}")
        picked.append(message)
    first_page_misses = sum(find_by_scan(store, m.id, max_pages=1) is None for m in picked)
    rebuilt_misses = sum(rebuilt_key(m.id) not in store for m in picked)
    return SizeResult(
        size=size,
        lookups=len(picked),
        scan_mean_ms=elapsed / len(picked) * 1e3,
        first_page_miss_rate=first_page_misses / len(picked),
        rebuilt_key_miss_rate=rebuilt_misses / len(picked),
    )
