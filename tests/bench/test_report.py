"""The report's verdicts are same-run ratios to the right baselines (pure logic, no processes)."""

from __future__ import annotations

from bench import report


def _by_target(results: report.Results) -> dict[str, report.Verdict]:
    return {verdict.target: verdict for verdict in report.verdicts(results)}


def test_end_to_end_is_measured_against_the_durable_redis_not_the_shared_one() -> None:
    results: report.Results = {
        "e2e": {
            "full_speed": {"answered_per_second": 600.0},
            "fixed_rate": {
                "rate_per_second": 200.0,
                "store_cpu_ms_per_answered": 1.5,
                "echo": {"server_cpu_ms_per_call": 0.5},
                "latency": {"p50_ms": 1.5, "p99_ms": 12.0},
            },
        },
        "redis": {
            "shared": {"answered_per_second": 6000.0},
            "durable": {"answered_per_second": 1000.0},
            "durable_pipelined": {"answered_per_second": 3000.0},
        },
    }
    verdicts = _by_target(results)

    unary = verdicts["End to end (unary producers) >= 0.5x the durable Redis Streams peer"]
    assert (unary.status, unary.measured) == ("PASS", "0.60x")
    cpu = verdicts["Store CPU per answered message at 200/s <= 4x the echo server's CPU per call"]
    assert (cpu.status, cpu.measured) == ("PASS", "3.0x")
    assert verdicts["Create-to-reply p50 <= 2 ms at 200/s"].status == "PASS"
    assert verdicts["Create-to-reply p99 <= 10 ms at 200/s"].status == "MISS"
    # No batching client yet: said so, not counted as a miss.
    batched = verdicts["End to end (batching client) >= 1.0x the durable peer, pipelined producers"]
    assert (batched.status, batched.measured) == ("n/a", "not measured yet (no batching client)")


def test_a_skipped_peer_leaves_its_targets_unmeasured_and_says_why_in_the_table() -> None:
    latency = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    full_speed = {"answered_per_second": 600.0, "answered": 9, "created": 9, "latency": latency}
    results: report.Results = {
        "e2e": {"full_speed": full_speed},
        "redis": {"durable": {"skipped": "no redis-server on this machine"}},
        "postgres_e2e": {"skipped": "no PostgreSQL at ..."},
        "postgres_peer": {"skipped": "no PostgreSQL at ..."},
    }
    verdicts = _by_target(results)

    assert (
        verdicts["End to end (unary producers) >= 0.5x the durable Redis Streams peer"].status
        == "n/a"
    )
    assert verdicts["End to end on PostgreSQL >= 0.5x the asyncpg SKIP LOCKED peer"].status == "n/a"
    notes = [row.note for row in report.rows(results)]
    assert "skipped: no redis-server on this machine" in notes
    assert notes.count("skipped: no PostgreSQL at ...") == 2
