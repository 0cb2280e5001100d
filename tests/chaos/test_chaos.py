"""The ci chaos profile, end to end: real store and bots under kills, cuts and stalls. Runs as a
subprocess, like `make chaos`, so its services, signals and event loop stay out of pytest's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The ci profile takes under two minutes on a 2-core machine; the rest is slack for a slow one
# (the run's own deadlines end it well before this).
RUN_TIMEOUT_SECONDS = 360


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_ci_profile_keeps_every_promise(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chaos.run", "--profile", "ci", "--workdir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    report = f"{result.stdout}\n{result.stderr}\n(logs in {tmp_path})"
    assert result.returncode == 0, report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"], report
    assert summary["figures"]["creates_acknowledged"] == summary["messages"], report
