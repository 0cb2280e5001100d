"""The benchmark suite of issue 3: `make bench`, or

    python -m bench.run [--quick] [--only NAME ...] [--out DIR]

Starts real store, bot and echo servers, runs each workload, prints one table with every figure
beside its baseline and the ratio, then the targets (issues 10, 22 and 3) with PASS or MISS, and
writes results.json, results.txt and results.png to DIR (default bench/results). Missing a
target is a finding, not a failure: the exit code is 0 unless a workload could not run.

The peers need more than Python: the Redis Streams peer uses the Redis at 127.0.0.1:6379 as
configured, and a private, durable `redis-server` it starts itself; the PostgreSQL runs use the
server of ACKBOT_BENCH_POSTGRES_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test),
a fresh database per run. What is missing is skipped, with a note in the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from bench import report
from bench.settings import FULL, QUICK, Settings, log_as_deployed
from bench.workloads import BASELINES, WORKLOADS, Context

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Runs the benchmark workloads of issue 3 and reports them against their "
        "baselines and targets.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a minute, not fifteen")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(WORKLOADS),
        metavar="NAME",
        help=f"run only these workloads (and their baselines): {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write results")
    return parser.parse_args(argv)


def chosen(only: Sequence[str] | None) -> list[str]:
    """The workloads to run, in WORKLOADS order (baselines first), baselines added."""
    names = set(only or WORKLOADS)
    names |= {BASELINES[name] for name in names if name in BASELINES}
    return [name for name in WORKLOADS if name in names]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "load_average_at_start": os.getloadavg(),
    }


async def run_all(
    names: list[str], settings: Settings, workdir: Path, seconds: dict[str, float]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Runs each workload in turn; returns the figures of those that ran and the errors of those
    that failed. `seconds` gets each workload's duration."""
    ctx = Context(settings=settings, workdir=workdir)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in names:
        started = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = await WORKLOADS[name](ctx)
        except Exception as exc:  # one broken workload must not hide the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(f"[bench] {name} failed: {errors[name]}", file=sys.stderr, flush=True)
        seconds[name] = time.monotonic() - started
        print(f"[bench] {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    return results, errors


def main(argv: Sequence[str] | None = None) -> int:
    log_as_deployed()
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    names = chosen(args.only)
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": "quick" if args.quick else "full",
        "workloads": names,
        "commit": git_commit(),
        "machine": machine(),
    }
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ackbot-bench-"))
    meta["workload_seconds"] = {}
    results, errors = asyncio.run(run_all(names, settings, workdir, meta["workload_seconds"]))
    meta["seconds"] = time.monotonic() - started
    meta["machine"]["load_average_at_end"] = os.getloadavg()
    if errors:
        # The servers' logs say why; keep them.
        print(f"[bench] logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)

    table = report.rows(results)
    text = report.render(table, report.verdicts(results), errors)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    document = report.document(meta, asdict(settings), results, errors)
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "results.txt").write_text(text + "\n")
    title = f"ackbot benchmarks ({meta['profile']}, commit {meta['commit']}, {meta['started']})"
    report.chart(results, args.out / "results.png", title)
    print(f"\nwritten: {args.out}/results.{{json,txt,png}} in {meta['seconds']:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
