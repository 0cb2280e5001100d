"""Every count and duration of the benchmark run, in one place.

Two profiles: FULL (what `make bench` runs, under ~15 minutes on the 2-core machine) and QUICK
(tiny sizes, well under a minute, for the smoke test and for trying a change).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ackbot.testing.process import SERVICE_LOG_LEVEL_ENV


def log_as_deployed() -> None:
    """The services a benchmark starts log at INFO, as a deployment's do, not at the DEBUG
    that the test harness gives them for the tests that read every per-message line (each
    line costs the store about 0.1 ms of CPU). Called first by each benchmark's main."""
    os.environ.setdefault(SERVICE_LOG_LEVEL_ENV, "INFO")


@dataclass(frozen=True)
class Settings:
    # Throughput runs (echo and CreateMessage): warm-up, then the measured window, per run.
    warmup_seconds: float = 1.0
    measure_seconds: float = 5.0
    # The concurrencies of issue 3: one caller, and 64 calls in flight on one channel.
    concurrencies: tuple[int, ...] = (1, 64)
    # End to end: producer tasks (closed loop) and how many messages they create in all.
    e2e_producers: int = 64
    e2e_messages: int = 10_000
    # The idle-system latency run: an open-loop producer at this rate, for this many messages.
    e2e_rate_per_second: float = 200.0
    e2e_rate_messages: int = 2_000
    # The Redis peer's pipelined producers: XADDs per round trip, from each of the e2e_producers
    # tasks (the counterpart of a client that batches creates).
    e2e_per_round_trip: int = 16
    # The bot's max_in_flight in the end-to-end runs; the Redis consumer reads as many at a time.
    # 64, not the bot's default 16: end-to-end throughput is in-flight / time per message
    # (Little's law), and at 16 it measures the window, not the store (16: ~240/s, 64: ~360/s,
    # 256: ~440/s on a loaded machine here). The slow-responder run keeps the default.
    bot_max_in_flight: int = 64
    # Lookups: table sizes, and how many timed GetMessage / MarkProcessed calls at each size.
    lookup_sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    lookup_samples: int = 2_000
    # Slow responder (bench.responders, 200 ms a reply): the bot's in-flight limit, the backlog.
    # 16 is the bot's default; its bound, 80/s, sits well under what the store settles per
    # second, so the figure measures the bot's concurrency, not the store's capacity.
    slow_max_in_flight: int = 16
    slow_messages: int = 1_200
    # The old way: sizes and lookups per size (its full scans are slow by design at 1M).
    oldway_sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    oldway_max_samples: int = 200
    oldway_budget_seconds: float = 4.0
    # Memory: rows held, of which this many are a PENDING backlog streamed to a bot.
    memory_messages: int = 1_000_000
    memory_backlog: int = 100_000
    memory_max_in_flight: int = 256
    # The backlog drains at the store's settle rate; stop sampling after this long regardless.
    memory_stream_seconds: float = 120.0
    rss_sample_seconds: float = 0.05
    # The retention sweep (bench/retention.py): settled rows to remove (answered pairs).
    sweep_messages: int = 1_000_000

    # The web front door (bench.web, issue 20): PostComment callers (and as many CreateMessage
    # callers beside them), and the viewers of one thread.
    web_concurrency: int = 16
    web_viewers: int = 500


FULL = Settings()

QUICK = Settings(
    web_viewers=50,
    warmup_seconds=0.2,
    measure_seconds=0.5,
    e2e_producers=16,
    e2e_messages=300,
    e2e_rate_messages=200,
    lookup_sizes=(1_000, 10_000),
    lookup_samples=200,
    slow_max_in_flight=16,
    slow_messages=160,
    oldway_sizes=(1_000, 10_000),
    oldway_max_samples=50,
    oldway_budget_seconds=0.5,
    memory_messages=10_000,
    memory_backlog=1_000,
    sweep_messages=20_000,
    memory_max_in_flight=64,
    memory_stream_seconds=20.0,
)
