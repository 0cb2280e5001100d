"""The chaos profiles end to end: real stores and bots under kills, cuts and stalls. Each runs as
a subprocess, like `make chaos`, so its services, signals and event loop stay out of pytest's.

`ci` runs one store on SQLite; `pg-ci` two stores on a fresh PostgreSQL database (skipped, with
the reason, without ACKBOT_TEST_POSTGRES_URL; CI sets it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.heavy import heavy

pytestmark = heavy

REPO_ROOT = Path(__file__).resolve().parents[2]
# The ci profiles take about two minutes on a 2-core machine; the rest is slack for a slow one
# (the run's own deadlines end it well before this).
RUN_TIMEOUT_SECONDS = 360
POSTGRES_URL_ENV = "ACKBOT_TEST_POSTGRES_URL"


def run_profile(profile: str, workdir: Path) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "chaos.run", "--profile", profile, "--workdir", str(workdir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    report = f"{result.stdout}\n{result.stderr}\n(logs in {workdir})"
    assert result.returncode == 0, report
    summary: dict[str, Any] = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"], report
    assert summary["figures"]["creates_acknowledged"] == summary["messages"], report
    return summary, report


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_ci_profile_keeps_every_promise(tmp_path):
    run_profile("ci", tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(POSTGRES_URL_ENV), reason=f"{POSTGRES_URL_ENV} is not set")
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_pg_ci_profile_keeps_every_promise_over_two_stores(tmp_path, record_property):
    # The run takes the server from the environment and makes a database of its own there.
    summary, report = run_profile("pg-ci", tmp_path)
    figures, faults = summary["figures"], summary["faults"]
    for name in ("delivered_on_another_store", "reap_ms_median", "reap_ms_max"):
        record_property(name, figures[name])
    print(f"\n{report}")
    # The run is only worth its verdict if it did what it is for: stores killed, each one
    # seen dead by the reaper, and work crossing from one store to the other.
    assert faults.get("kill-store", 0) >= 1, report
    assert figures["stores_declared_dead"] >= faults["kill-store"], report
    assert figures["store_kills_not_reaped"] == 0, report
    assert figures["delivered_on_another_store"] > 0, report
    # A store stopped while it holds the insert turn is declared dead and its sessions ended
    # (a seed may draw no such stall: weight 2 of the pg-ci faults).
    if faults.get("stall-store"):
        assert figures["store_stalls_not_reaped"] == 0, report
        record_property("stall_reap_ms_max", figures["stall_reap_ms_max"])
