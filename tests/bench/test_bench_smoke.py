"""Smoke test of the benchmark suite: it runs, exits 0 and writes its results. Never a speed
check: the figures of a shared CI machine mean nothing on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The cheapest workloads that still start a real server and a client process (the gRPC
# ceiling) and run in-process (the old way).
WORKLOADS = ("ceiling", "oldway")


@pytest.mark.slow
def test_quick_run_writes_table_json_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", *WORKLOADS, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Targets of issues 10, 22 and 3" in run.stdout

    document = json.loads((out / "results.json").read_text())
    assert set(document) >= {"meta", "settings", "results", "errors", "table", "targets"}
    assert document["errors"] == {}
    assert document["meta"]["profile"] == "quick"
    results = document["results"]
    assert set(results) == set(WORKLOADS)
    assert set(results["ceiling"]) == {"unary_c1", "unary_c64", "stream"}
    for run_figures in (results["ceiling"]["unary_c1"], results["ceiling"]["unary_c64"]):
        assert run_figures["calls"] > 0
        assert run_figures["errors"] == 0
    assert results["ceiling"]["stream"]["messages_per_second"] > 0
    sizes = document["settings"]["oldway_sizes"]
    assert set(results["oldway"]) == {str(size) for size in sizes}
    # Past the first page of 1,000 keys, the old first-page scan cannot find most keys.
    assert results["oldway"][str(max(sizes))]["first_page_miss_rate"] > 0
    assert {row["workload"] for row in document["table"]} == set(WORKLOADS)
    assert len(document["targets"]) == 13
    assert (out / "results.txt").read_text().startswith("workload")
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")


def test_postgres_workloads_skip_with_a_note_when_no_server_answers(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    env = {**os.environ, "ACKBOT_BENCH_POSTGRES_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/x"}
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "postgres_e2e", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"postgres_e2e", "postgres_peer"}
    for figures in results.values():
        assert "127.0.0.1:1" in figures["skipped"]
    assert "n/a   End to end on PostgreSQL" in run.stdout
