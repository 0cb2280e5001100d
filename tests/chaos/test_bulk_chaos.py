"""The bulk chaos profiles (issue 19): the ci runs with erasures cut by a SIGKILL of their store
and stores sweeping tombstones all the while; every promise of the ci run holds, and no erasure
leaves anything of its author readable. Subprocesses, like tests/chaos/test_chaos.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.heavy import heavy

pytestmark = [heavy, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 360
POSTGRES_URL_ENV = "ACKBOT_TEST_POSTGRES_URL"


def _run(profile: str, workdir: Path) -> None:
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
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"], report
    assert summary["faults"].get("erase-kill-store", 0) > 0, "no erasure was cut: " + report


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_bulk_ci_profile_keeps_every_promise(tmp_path):
    _run("bulk-ci", tmp_path)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(POSTGRES_URL_ENV), reason=f"{POSTGRES_URL_ENV} is not set")
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 30)
def test_the_pg_bulk_ci_profile_keeps_every_promise(tmp_path):
    _run("pg-bulk-ci", tmp_path)
