"""The chaos profiles end to end: real stores and bots under kills, cuts and stalls. Each runs as
a subprocess, like `make chaos`, so its services, signals and event loop stay out of pytest's.

`ci` runs one store on SQLite; `pg-ci` two stores on a fresh PostgreSQL database (the postgres
marker; see tests/conftest.py for when it may skip). `long` and `pg-long`, the same for 25
minutes each, are marked `long`: only `make test-long` runs them."""

from __future__ import annotations

import json
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
# The long profiles produce for 1,875 s and may drain for 300 s; then listing and checking
# 50,000 messages.
LONG_RUN_TIMEOUT_SECONDS = 2_700
KILLS = ("kill-store", "kill-bot", "stop-bot")


def run_profile(
    profile: str, workdir: Path, timeout: float = RUN_TIMEOUT_SECONDS
) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "chaos.run", "--profile", profile, "--workdir", str(workdir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    report = f"{result.stdout}\n{result.stderr}\n(logs in {workdir})"
    assert result.returncode == 0, report
    summary: dict[str, Any] = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"], report
    assert summary["figures"]["creates_acknowledged"] == summary["messages"], report
    check_faults_happened(summary, report)
    return summary, report


def check_faults_happened(summary: dict[str, Any], report: str) -> None:
    """A run is only worth its verdict if the faults it is about happened: a fault scheduler
    that never fires would otherwise pass as a perfect run."""
    faults, figures = summary["faults"], summary["figures"]
    scheduled = {name: n for name, n in faults.items() if name != "connections-reset"}
    # A fault every 0.5 to 3 s for 75 s is some 40; 5 is far below any honest run.
    assert sum(scheduled.values()) >= 5, report
    assert sum(faults.get(name, 0) for name in KILLS) >= 1, report
    # And they did something: deliveries cut short by a kill or a stall were made again.
    assert figures["redelivered"] > 0, report


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_ci_profile_keeps_every_promise(tmp_path):
    run_profile("ci", tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_pg_ci_profile_keeps_every_promise_over_two_stores(tmp_path, record_property):
    # The run takes the server from the environment and makes a database of its own there.
    summary, report = run_profile("pg-ci", tmp_path)
    check_store_faults(summary, report)
    figures = summary["figures"]
    for name in ("delivered_on_another_store", "reap_ms_median", "reap_ms_max"):
        record_property(name, figures[name])
    if summary["faults"].get("stall-store"):
        record_property("stall_reap_ms_max", figures["stall_reap_ms_max"])
    print(f"\n{report}")


def check_store_faults(summary: dict[str, Any], report: str) -> None:
    figures, faults = summary["figures"], summary["faults"]
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


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(LONG_RUN_TIMEOUT_SECONDS + 60)
def test_the_long_profile_keeps_every_promise(tmp_path):
    run_profile("long", tmp_path, timeout=LONG_RUN_TIMEOUT_SECONDS)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.postgres
@pytest.mark.timeout(LONG_RUN_TIMEOUT_SECONDS + 60)
def test_the_pg_long_profile_keeps_every_promise_over_two_stores(tmp_path):
    summary, report = run_profile("pg-long", tmp_path, timeout=LONG_RUN_TIMEOUT_SECONDS)
    check_store_faults(summary, report)


def test_a_run_whose_faults_never_fired_fails_the_fault_check():
    # What a broken fault scheduler leaves: a perfect run with nothing done to it.
    quiet = {"faults": {"connections-reset": 0}, "figures": {"redelivered": 0}}
    with pytest.raises(AssertionError):
        check_faults_happened(quiet, "no faults")
    busy = {"faults": {"kill-bot": 3, "cut-bots": 4}, "figures": {"redelivered": 9}}
    check_faults_happened(busy, "faults")
