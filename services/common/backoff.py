"""Retry timing shared by everything that calls the store: the bot, the CLI's tools, the chaos
workload. Exponential backoff with full jitter for calls and reconnects, and the bot's delay
before a failed message is delivered again."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# The longest a failed message waits before its next delivery, whatever the attempt: below the
# contract's retry_after limit, and short enough that a fixed responder catches up soon.
MAX_RELEASE_RETRY_AFTER_SECONDS = 300.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: retry n sleeps uniform(0, min(cap, initial * 2^n)).

    Full jitter spreads the retries of many tasks (or many bots) that failed at the same moment,
    so a store that comes back is not hit by all of them at once.
    """

    initial_seconds: float
    cap_seconds: float

    def ceiling(self, retry: int) -> float:
        # Past 2^60 the product only overflows; the cap has long been reached by then.
        return min(self.cap_seconds, self.initial_seconds * 2 ** min(max(retry, 0), 60))

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        return self.ceiling(retry) * rand()


# A unary call that failed with a retryable code.
CALL_BACKOFF = Backoff(initial_seconds=0.05, cap_seconds=2.0)
# A stream that broke, or a store that could not be reached.
RECONNECT_BACKOFF = Backoff(initial_seconds=0.1, cap_seconds=5.0)


def release_retry_after(
    attempt: int, base_seconds: float, cap_seconds: float = MAX_RELEASE_RETRY_AFTER_SECONDS
) -> float:
    """How long a message waits after its `attempt`-th delivery failed: base * 2^(attempt-1)."""
    return min(cap_seconds, base_seconds * 2 ** min(max(attempt - 1, 0), 60))
