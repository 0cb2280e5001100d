"""The chaos run: `python -m chaos.run --profile {ci,long,pg-ci,pg-long,bulk-ci,pg-bulk-ci}
[--seed N] [--messages N] [--workdir D] [--db-url URL]`.

Producers create the seeded plan of messages while three bots answer them and the fault
scheduler kills, restarts, cuts and stalls. Then the faults stop, the bots drain, and the
store's whole contents are checked against what the producers were told (chaos/check.py).
The pg-* profiles run two stores on a fresh PostgreSQL database of their own (on the server
--db-url or ACKBOT_TEST_POSTGRES_URL names), dropped after the run.
Prints a one-screen summary, writes it to WORKDIR/summary.json, and exits 1 on any violation
(2 when the run itself could not be carried out), naming the seed that replays it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from ackbot.testing import PAGE_SIZE, RPC_TIMEOUT, wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

from .check import CHECKS, Verdict, check
from .faults import FAULT_WEIGHTS, PERSONAS, Cluster, ClusterSettings, FaultScheduler
from .postgres import POSTGRES_URL_ENV, fresh_database
from .workload import CreateLedger, Producers, make_plan

log = logging.getLogger("chaos")

SUMMARY_FILE = "summary.json"
EXIT_VIOLATION = 1
EXIT_BROKEN_RUN = 2
SHOWN_VIOLATIONS = 15
PROGRESS_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class Profile:
    name: str
    messages: int
    producers: int
    # Creates are spread evenly over this long; faults run for as long as the producers do.
    produce_seconds: float
    # After the faults stop: how long the bots may take to settle everything.
    drain_seconds: float
    fault_pause_seconds: tuple[float, float]
    # Longer than the lease on purpose, now and then: leases expire under a stalled bot, the
    # message goes to another, and the late reply must be the one that is refused.
    stall_seconds: tuple[float, float]
    fail_fraction: float
    # Messages whose reply needs a lease extension (see chaos/responder.py).
    slow_fraction: float
    cluster: ClusterSettings = field(
        default_factory=lambda: ClusterSettings(
            max_in_flight=16,
            lease_seconds=4,
            # Above the default 5: every delivery to a bot that then dies counts as an attempt,
            # and with a fault every few seconds a message could die of bad luck alone. With
            # 10, DEAD in the verdict means the responder failed it.
            max_attempts=10,
        )
    )
    # Runs on a fresh PostgreSQL database (cluster.stores may then be more than one).
    postgres: bool = False
    fault_weights: dict[str, int] = field(default_factory=lambda: dict(FAULT_WEIGHTS))


# Sized for a 2-core CI machine: under 2 minutes from start to verdict.
_CI = Profile(
    name="ci",
    messages=2_000,
    producers=8,
    produce_seconds=75,
    drain_seconds=60,
    fault_pause_seconds=(0.5, 3.0),
    stall_seconds=(0.5, 7.0),
    fail_fraction=0.02,
    slow_fraction=0.01,
)
PROFILES = {
    "ci": _CI,
    # The same rate of messages and faults, for 25 minutes.
    "long": replace(
        _CI,
        name="long",
        messages=50_000,
        producers=16,
        produce_seconds=1_875,
        drain_seconds=300,
    ),
}
# Two stores on one PostgreSQL database, the same bots, faults and checks as `ci`, and what
# several stores add: a store killed while it holds leases must have them handed back by the
# reaper (so store kills are more frequent, and more replies are slow enough to be in flight
# at a kill), and work created through one store is delivered through the other.
_PG_CI = replace(
    _CI,
    name="pg-ci",
    slow_fraction=0.03,
    cluster=replace(_CI.cluster, stores=2),
    postgres=True,
    # A store stopped while it holds the insert turn must cost the others seconds of writes.
    fault_weights={**FAULT_WEIGHTS, "kill-store": 5, "stall-store": 2},
)
PROFILES["pg-ci"] = _PG_CI
# The ci profiles with issue 19's bulk work under kills: an erasure cut by a SIGKILL of its store
# (then finished; no pair may be left half deleted), and stores that sweep tombstones away
# (--retain-deleted 0s) all the while, so a store kill may land mid-sweep too.
_BULK_FAULTS = {"erase-kill-store": 3}
PROFILES["bulk-ci"] = replace(
    _CI,
    name="bulk-ci",
    fault_weights={**FAULT_WEIGHTS, **_BULK_FAULTS},
    cluster=replace(_CI.cluster, sweep_tombstones=True),
)
PROFILES["pg-bulk-ci"] = replace(
    _PG_CI,
    name="pg-bulk-ci",
    fault_weights={**_PG_CI.fault_weights, **_BULK_FAULTS},
    cluster=replace(_PG_CI.cluster, sweep_tombstones=True),
)
# The same rate of messages and faults, for 25 minutes.
PROFILES["pg-long"] = replace(
    _PG_CI,
    name="pg-long",
    messages=50_000,
    producers=16,
    produce_seconds=1_875,
    drain_seconds=300,
)


@dataclass
class Outcome:
    """Everything the summary reports."""

    seed: int
    profile: str
    messages: int
    workdir: str
    # The profile as run, so that figures quoted from summary.json come with their setup.
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    figures: dict[str, int] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    drained: bool = True

    @property
    def ok(self) -> bool:
        return self.drained and not self.violations


async def list_everything(address: str) -> list[pb.Message]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        messages: list[pb.Message] = []
        token = ""
        while True:
            response = await stub.ListMessages(
                pb.ListMessagesRequest(page_size=PAGE_SIZE, page_token=token), timeout=RPC_TIMEOUT
            )
            messages.extend(response.messages)
            token = response.next_page_token
            if not token:
                return messages


async def wait_drained(address: str, within: float) -> bool:
    """Waits until no message is PENDING or LEASED; False when that did not happen in time."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)

        async def settled() -> bool:
            for state in (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED):
                response = await stub.ListMessages(
                    pb.ListMessagesRequest(state=state, page_size=1), timeout=RPC_TIMEOUT
                )
                if response.messages:
                    return False
            return True

        try:
            await wait_until(settled, within, interval=0.5, what="every message settled")
        except TimeoutError:
            return False
        return True


async def report_progress(
    ledger: CreateLedger, messages: int, scheduler: FaultScheduler, started: float
) -> None:
    """A line on stderr now and then, so a long run shows it is alive."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)  # a reporting interval, not a wait
        print(
            f"[{loop.time() - started:6.0f}s] {len(ledger.acknowledged)}/{messages} creates "
            f"acknowledged, {scheduler.counts.total()} faults so far",
            file=sys.stderr,
            flush=True,
        )


def count_log_lines(services_logs: Sequence[str], needle: str) -> int:
    return sum(text.count(needle) for text in services_logs)


async def run(profile: Profile, seed: int, workdir: Path, server_url: str | None = None) -> Outcome:
    """The run; a postgres profile gets a database of its own on `server_url`'s server."""
    if not profile.postgres:
        return await _run(profile, seed, workdir, None)
    if server_url is None:
        raise ValueError(f"profile {profile.name} needs a PostgreSQL server URL")
    async with fresh_database(server_url) as db_url:
        log.info("running on a fresh database %s", db_url.rsplit("/", 1)[-1])
        return await _run(profile, seed, workdir, db_url)


async def _run(profile: Profile, seed: int, workdir: Path, db_url: str | None) -> Outcome:
    outcome = Outcome(
        seed=seed,
        profile=profile.name,
        messages=profile.messages,
        workdir=str(workdir),
        settings={**asdict(profile), "bots": len(PERSONAS)},
    )
    plan = make_plan(
        seed,
        profile.messages,
        profile.producers,
        profile.produce_seconds,
        profile.fail_fraction,
        profile.slow_fraction,
    )
    cluster = Cluster(workdir, profile.cluster, db_url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await cluster.start()
        outcome.seconds["start"] = round(loop.time() - started, 1)
        scheduler = FaultScheduler(
            cluster,
            random.Random(f"{seed}:faults"),
            profile.fault_pause_seconds,
            profile.stall_seconds,
            profile.fault_weights,
        )
        stop_faults = asyncio.Event()
        faults = asyncio.create_task(scheduler.run(stop_faults, started))
        producers = Producers(
            [proxy.address for proxy in cluster.producers_proxies],
            plan,
            profile.producers,
            give_up_after=profile.produce_seconds + profile.drain_seconds,
        )
        producing = loop.time()
        progress = asyncio.create_task(
            report_progress(producers.ledger, profile.messages, scheduler, started)
        )
        try:
            ledger: CreateLedger = await producers.run()
        finally:
            progress.cancel()
            stop_faults.set()
            await faults
            await scheduler.finish_watches()
        outcome.seconds["produce"] = round(loop.time() - producing, 1)

        exited = await cluster.revive()
        draining = loop.time()
        outcome.drained = await wait_drained(cluster.store.address, profile.drain_seconds)
        outcome.seconds["drain"] = round(loop.time() - draining, 1)
        messages = await list_everything(cluster.store.address)
        await cluster.stop()
    finally:
        cluster.cleanup()
    outcome.seconds["total"] = round(loop.time() - started, 1)

    verdict = check(messages, plan, ledger, PERSONAS, exited)
    _fill(outcome, verdict, scheduler, cluster)
    (workdir / "faults.log").write_text("".join(f"{line}\n" for line in scheduler.timeline))
    return outcome


def _fill(outcome: Outcome, verdict: Verdict, scheduler: FaultScheduler, cluster: Cluster) -> None:
    outcome.faults = dict(sorted(scheduler.counts.items()))
    outcome.faults["connections-reset"] = scheduler.cut_connections
    store_log = cluster.store_logs()
    bot_logs = [bot.log_text() for bot in cluster.bots]
    outcome.figures = {
        **verdict.figures,
        # The store logs each MarkProcessed that found the message already answered.
        "duplicate_replies_prevented": count_log_lines(store_log, "duplicate reply prevented"),
        "leases_released_on_stream_end": count_log_lines(store_log, "lease released on stream end"),
        "replies_abandoned_lease_lost": count_log_lines(bot_logs, "abandoning the reply"),
        "store_unexpected_errors": count_log_lines(store_log, "unexpected error"),
    }
    if len(cluster.stores) > 1:
        outcome.figures.update(_store_figures(store_log, scheduler))
    outcome.checks = {name: verdict.count(name) for name in CHECKS}
    outcome.violations = [f"{v.check}: {v.detail}" for v in verdict.violations]
    outcome.violations += [f"erasure half done: {problem}" for problem in scheduler.erase_problems]


_CREATED = re.compile(r"created message_id=(\S+)")
_DELIVERED = re.compile(r"delivered message_id=(\S+)")


def _store_figures(store_logs: Sequence[str], scheduler: FaultScheduler) -> dict[str, int]:
    """What only several stores show: deliveries across stores (each woken by a notification
    or the fallback poll) and the reaper's work after each store kill."""
    created_on = {
        message_id: index
        for index, text in enumerate(store_logs)
        for message_id in _CREATED.findall(text)
    }
    across = {
        message_id
        for index, text in enumerate(store_logs)
        for message_id in _DELIVERED.findall(text)
        if created_on.get(message_id, index) != index
    }
    seen = [seconds for seconds in scheduler.reap_seconds if seconds is not None]
    return {
        "delivered_on_another_store": len(across),
        "stores_declared_dead": count_log_lines(store_logs, ") is dead: "),
        "leases_released_by_reaper": count_log_lines(store_logs, "lease of a dead store released"),
        "store_kills_not_reaped": len(scheduler.reap_seconds) - len(seen),
        # Milliseconds, so that figures stay integers: kill to "is dead", median and worst.
        "reap_ms_median": round(1000 * statistics.median(seen)) if seen else 0,
        "reap_ms_max": round(1000 * max(seen)) if seen else 0,
        # stall-store: SIGSTOP to "is dead", and the dead stores' sessions the others ended.
        "store_stalls_inside_insert": scheduler.stalls_inside_insert,
        "store_stalls_not_reaped": sum(s is None for s in scheduler.stall_reap_seconds),
        "stall_reap_ms_max": round(
            1000 * max((s for s in scheduler.stall_reap_seconds if s is not None), default=0)
        ),
        "dead_store_sessions_ended": count_log_lines(store_logs, "ended database session"),
    }


def replay_command(outcome: Outcome) -> str:
    return (
        f"python -m chaos.run --profile {outcome.profile} --seed {outcome.seed} "
        f"--messages {outcome.messages}"
        # The server's URL may carry a password: the command names the variable instead.
        + (f' --db-url "${POSTGRES_URL_ENV}"' if outcome.profile.startswith("pg-") else "")
    )


def render(outcome: Outcome) -> str:
    figures, faults, seconds = outcome.figures, outcome.faults, outcome.seconds
    kills = faults.get("kill-store", 0), faults.get("kill-bot", 0), faults.get("stop-bot", 0)
    cuts = faults.get("cut-bots", 0), faults.get("cut-producers", 0)
    stalls = (
        faults.get("stall-bots", 0),
        faults.get("stall-one-bot", 0),
        faults.get("stall-producers", 0),
    )
    lines = [
        f"ackbot chaos run: profile {outcome.profile}, seed {outcome.seed}, "
        f"{outcome.messages} messages",
        f"  replay: {replay_command(outcome)}",
        f"  workdir: {outcome.workdir}",
        "  time: " + ", ".join(f"{name} {value:.1f}s" for name, value in seconds.items()),
        f"faults: store SIGKILLs {kills[0]}, bot SIGKILLs {kills[1]}, bot SIGTERMs {kills[2]}, "
        f"cuts {sum(cuts)} (bots {cuts[0]}, producers {cuts[1]}; "
        f"{faults.get('connections-reset', 0)} connections reset), "
        f"stalls {sum(stalls)} (all bots {stalls[0]}, one bot {stalls[1]}, "
        f"producers {stalls[2]})",
        f"creates: {figures.get('creates_acknowledged', 0)} acknowledged, "
        f"{figures.get('create_retries', 0)} retries, "
        f"{figures.get('creates_retried_already_existed', 0)} retries answered already-existed",
        f"outcome: {figures.get('processed', 0)} PROCESSED ({figures.get('processed_slow', 0)} "
        f"needing a lease extension) with {figures.get('replies', 0)} "
        f"replies, {figures.get('dead', 0)} DEAD ({figures.get('dead_expected', 0)} made to "
        f"fail), {figures.get('left_unsettled', 0)} unsettled",
        f"redeliveries: {figures.get('redelivered', 0)} messages delivered more than once "
        f"({figures.get('redelivered_answered_once', 0)} of them answered exactly once; "
        f"at most {figures.get('max_delivery_attempts', 0)} deliveries), "
        f"{figures.get('duplicate_replies_prevented', 0)} duplicate replies prevented, "
        f"{figures.get('replies_abandoned_lease_lost', 0)} replies abandoned on a lost lease",
    ]
    if "reap_ms_max" in figures:
        lines.append(
            f"stores: {figures['delivered_on_another_store']} messages delivered on another "
            f"store than the one that created them; {figures['stores_declared_dead']} store "
            f"deaths seen by the reaper, {figures['leases_released_by_reaper']} leases handed "
            f"back, kill to reap median {figures['reap_ms_median'] / 1000:.2f}s, worst "
            f"{figures['reap_ms_max'] / 1000:.2f}s, {figures['store_kills_not_reaped']} kills "
            "never reaped"
        )
    if faults.get("stall-store"):
        lines.append(
            f"store stalls: {faults['stall-store']} SIGSTOPs "
            f"({figures['store_stalls_inside_insert']} holding the insert turn), stop to reap "
            f"worst {figures['stall_reap_ms_max'] / 1000:.2f}s, "
            f"{figures['store_stalls_not_reaped']} never reaped; "
            f"{figures['dead_store_sessions_ended']} sessions of dead stores ended"
        )
    lines.append("checks:")
    if not outcome.drained:
        lines.append(f"  FAIL  bots drained within the deadline (after {seconds['drain']:.0f}s)")
    for name, count in outcome.checks.items():
        lines.append(
            f"  {'ok  ' if count == 0 else 'FAIL'}  {name}" + (f": {count}" if count else "")
        )
    if figures.get("store_kills_not_reaped"):
        lines.append(f"  note: {figures['store_kills_not_reaped']} store kills were never reaped")
    if figures.get("store_stalls_not_reaped"):
        lines.append(f"  note: {figures['store_stalls_not_reaped']} store stalls were never reaped")
    if figures.get("store_unexpected_errors"):
        lines.append(
            f"  note: the store logged {figures['store_unexpected_errors']} unexpected errors"
        )
    for violation in outcome.violations[:SHOWN_VIOLATIONS]:
        lines.append(f"    {violation}")
    if len(outcome.violations) > SHOWN_VIOLATIONS:
        lines.append(f"    ... {len(outcome.violations) - SHOWN_VIOLATIONS} more in {SUMMARY_FILE}")
    if not outcome.ok:
        lines.append(f"  trace a message: grep MESSAGE_ID {outcome.workdir}/*.log")
    verdict = "PASS" if outcome.ok else f"FAIL: replay with {replay_command(outcome)}"
    lines.append(f"result: {verdict}")
    return "\n".join(lines)


def prepare_workdir(path: str | None, seed: int) -> Path:
    if path is None:
        return Path(tempfile.mkdtemp(prefix=f"ackbot-chaos-{seed}-"))
    workdir = Path(path).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # A rerun in the same folder starts from an empty database; the logs start over too.
    for leftover in ["chaos.db", "chaos.db-wal", "chaos.db-shm", SUMMARY_FILE, "faults.log"]:
        (workdir / leftover).unlink(missing_ok=True)
    for old_log in workdir.glob("*.log"):
        old_log.unlink()
    return workdir


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--seed", type=int, help="replays a run's faults and messages")
    parser.add_argument("--messages", type=int, help="overrides the profile's message count")
    parser.add_argument("--workdir", help="database, logs and summary.json (default: a temp dir)")
    parser.add_argument(
        "--db-url",
        default=os.environ.get(POSTGRES_URL_ENV),
        help=f"pg-* profiles: a PostgreSQL server's SQLAlchemy URL (default: ${POSTGRES_URL_ENV});"
        " the run creates a database of its own there and drops it after",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    if args.messages is not None:
        if args.messages < 1:
            print("--messages must be at least 1", file=sys.stderr)
            return EXIT_BROKEN_RUN
        # Fewer messages, same rate: the run gets shorter, the faults as dense.
        scale = args.messages / profile.messages
        profile = replace(
            profile, messages=args.messages, produce_seconds=profile.produce_seconds * scale
        )
    if profile.postgres and not args.db_url:
        print(f"profile {profile.name} needs --db-url or {POSTGRES_URL_ENV}", file=sys.stderr)
        return EXIT_BROKEN_RUN
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    workdir = prepare_workdir(args.workdir, seed)
    logging.basicConfig(
        filename=workdir / "chaos.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        outcome = asyncio.run(
            run(profile, seed, workdir, args.db_url if profile.postgres else None)
        )
    except Exception:
        log.exception("the chaos run broke")
        traceback.print_exc()
        print(f"the chaos run itself broke: seed {seed}, logs in {workdir}", file=sys.stderr)
        return EXIT_BROKEN_RUN
    summary = render(outcome)
    print(summary)
    record: dict[str, Any] = {
        **asdict(outcome),
        "ok": outcome.ok,
        "replay": replay_command(outcome),
    }
    (workdir / SUMMARY_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return 0 if outcome.ok else EXIT_VIOLATION


if __name__ == "__main__":
    sys.exit(main())
