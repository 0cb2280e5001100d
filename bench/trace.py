"""Where a message's time goes in the batched end-to-end run: every process traces each step of
each message (ackbot.common.trace), and this joins the traces by message id.

    python -m bench.trace [--messages 10000] [--producers 64] [--in-flight 64] [--rate 0]
                          [--keep DIR]

Runs the end-to-end workload's batched run (the Publisher in the load generator, one bot with
the built-in responder, `--in-flight` its max_in_flight) with ACKBOT_TRACE_DIR set for the store,
the bot and the load generator, then prints, for the messages of the steady middle of the run
(the first and last 10% left out):
- each step's time from the step before (p50, p90, mean), and how many messages sit in that step
  on average (Little's law: throughput x mean time), which says where the in-flight window is;
- how full the store's window for the bot was (leased and not yet settled), and how long a slot
  freed by a committed settlement stayed empty before the next claim filled it.
The clock is CLOCK_MONOTONIC, one for every process of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ackbot.common.trace import TRACE_DIR_ENV
from ackbot.testing import child_env
from bench.settings import FULL, Settings, log_as_deployed
from bench.workloads import E2E_RUNS, Context, _ackbot_end_to_end

# A message's steps in the order they happen; `returned` (the producer's future) runs beside
# the delivery, from the create's commit.
STEPS = (
    "publish",
    "batch_sent",
    "store_create_received",
    "store_create_committed",
    "store_claimed",
    "store_delivered",
    "bot_received",
    "bot_started",
    "bot_answered",
    "bot_settle_sent",
    "store_settle_received",
    "store_settle_committed",
    "store_result_sent",
    "bot_result_received",
    "bot_slot_freed",
)
SIDE_STEPS = {"returned": "store_create_committed"}
# What each step's interval is, in words (the table's first column).
MEANING = {
    "batch_sent": "waits in the Publisher's open batch",
    "store_create_received": "batch request reaches the handler (network, decode, validation)",
    "store_create_committed": "create's group-commit transaction (queue + run + fsync)",
    "store_claimed": "until leased to the bot's stream (claim on create, or a claim later)",
    "store_delivered": "claimed -> put in a Consume response",
    "bot_received": "store -> bot (serialize, network, bot reads)",
    "bot_started": "waits for a bot slot (semaphore of max_in_flight)",
    "bot_answered": "the responder, until it acks",
    "bot_settle_sent": "settlement queued on the session -> request sent",
    "store_settle_received": "bot -> store (network, store reads)",
    "store_settle_committed": "mark's group-commit transaction (queue + run + fsync)",
    "store_result_sent": "result through the session's outbox",
    "bot_result_received": "store -> bot, result delivered to the waiting ack",
    "bot_slot_freed": "ack returns, slot freed",
    "returned": "create committed -> the producer's future resolves",
}


def read_traces(folder: Path) -> dict[str, dict[str, int]]:
    """message id -> step -> ns (the first time a message reached a step)."""
    times: dict[str, dict[str, int]] = defaultdict(dict)
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            message_id, step, ns = line.split("\t")
            times[message_id].setdefault(step, int(ns))
    return times


def _ms(values: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (
        ordered[len(ordered) // 2] / 1e6,
        ordered[int(len(ordered) * 0.9)] / 1e6,
        statistics.fmean(ordered) / 1e6,
    )


def analyse(times: dict[str, dict[str, int]], window: int) -> str:
    complete = {m: t for m, t in times.items() if all(s in t for s in (*STEPS, *SIDE_STEPS))}
    if not complete:
        return "no message has every step traced"
    ordered = sorted(complete, key=lambda m: complete[m]["publish"])
    cut = len(ordered) // 10
    middle = ordered[cut : len(ordered) - cut] or ordered
    first = complete[middle[0]]["publish"]
    last = complete[middle[-1]]["publish"]
    rate = (len(middle) - 1) / ((last - first) / 1e9) if last > first else 0.0
    lines = [
        f"{len(complete)} messages traced whole; the middle {len(middle)} published at "
        f"{rate:,.0f}/s",
        "",
        "| step | time from the step before | p50 ms | p90 ms | mean ms | messages in it |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    pairs = list(itertools.pairwise(STEPS)) + [
        (before, step) for step, before in SIDE_STEPS.items()
    ]
    total = 0.0
    for before, step in pairs:
        deltas = [complete[m][step] - complete[m][before] for m in middle]
        p50, p90, mean = _ms(deltas)
        if step not in SIDE_STEPS:
            total += mean
        # Little's law with the step's own rate: the producers run ahead of the answers.
        reached = [complete[m][step] for m in middle]
        span = (max(reached) - min(reached)) / 1e9
        step_rate = (len(reached) - 1) / span if span > 0 else 0.0
        lines.append(
            f"| {step} | {MEANING[step]} | {p50:.2f} | {p90:.2f} | {mean:.2f} | "
            f"{step_rate * mean / 1e3:.1f} |"
        )
    lines.append(f"| total | publish -> slot freed | | | {total:.2f} | |")
    cycle = [complete[m]["store_settle_committed"] - complete[m]["store_claimed"] for m in middle]
    claimed = [complete[m]["store_claimed"] for m in middle]
    answer_rate = (len(claimed) - 1) / ((max(claimed) - min(claimed)) / 1e9)
    lines += [
        "",
        f"answered (claimed) at {answer_rate:,.0f}/s; a slot is held from claim to committed "
        f"settlement for {statistics.fmean(cycle) / 1e6:.2f} ms on average (p50 "
        f"{_ms(cycle)[0]:.2f} ms)",
    ]
    lines += ["", *_window(complete, middle, window)]
    return "\n".join(lines)


def _window(complete: dict[str, dict[str, int]], middle: list[str], window: int) -> list[str]:
    """How full the stream's window was over the middle of the run, and each freed slot's wait
    for the next claim."""
    start = complete[middle[0]]["store_claimed"]
    end = complete[middle[-1]]["store_claimed"]
    events: list[tuple[int, int]] = []
    claims: list[int] = []
    for t in complete.values():
        events.append((t["store_claimed"], 1))
        events.append((t["store_settle_committed"], -1))
        claims.append(t["store_claimed"])
    events.sort()
    claims.sort()
    held = 0
    weighted = 0.0
    full_ns = 0
    previous = start
    for at, change in events:
        if at > start:
            span = min(at, end) - previous
            if span > 0:
                weighted += held * span
                if held >= window:
                    full_ns += span
                previous = min(at, end)
        held += change
        if at >= end:
            break
    seconds = (end - start) / 1e9
    refill = []
    for m in middle:
        freed = complete[m]["store_settle_committed"]
        i = bisect.bisect_left(claims, freed)
        if i < len(claims):
            refill.append(claims[i] - freed)
    p50, p90, mean = _ms(refill)
    backlog = [complete[m]["store_claimed"] - complete[m]["store_create_committed"] for m in middle]
    return [
        f"store's window for the bot ({window}): {weighted / (end - start):.1f} leased on average,"
        f" full {100 * full_ns / (end - start):.0f}% of {seconds:.1f} s",
        f"a freed slot (settlement committed) until the next claim: p50 {p50:.2f} ms, "
        f"p90 {p90:.2f} ms, mean {mean:.2f} ms",
        f"created -> claimed (the backlog's wait): mean {statistics.fmean(backlog) / 1e6:.2f} ms",
    ]


async def traced_run(
    folder: Path, settings: Settings, messages: int, producers: int, rate: float
) -> dict[str, object]:
    env = child_env({TRACE_DIR_ENV: str(folder / "trace")})
    (folder / "trace").mkdir()
    ctx = Context(settings=settings, workdir=folder, env=env)
    # The services get the trace folder too: they are started with ctx.env's additions.
    return await _ackbot_end_to_end(
        ctx, count=messages, concurrency=producers, rate=rate, producers=E2E_RUNS["batched"],
        service_env={TRACE_DIR_ENV: str(folder / "trace")},
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    log_as_deployed()
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__)
    parser.add_argument("--messages", type=int, default=FULL.e2e_messages)
    parser.add_argument("--producers", type=int, default=FULL.e2e_producers)
    parser.add_argument("--in-flight", type=int, default=FULL.bot_max_in_flight)
    parser.add_argument("--rate", type=float, default=0.0, help="0: closed loop, full speed")
    parser.add_argument("--keep", type=Path, help="keep the traces and logs in this folder")
    args = parser.parse_args(argv)
    settings = Settings(bot_max_in_flight=args.in_flight)
    with tempfile.TemporaryDirectory(prefix="ackbot-trace-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(
            traced_run(folder, settings, args.messages, args.producers, args.rate)
        )
        print(
            f"answered {figures['answered_per_second']:,.0f}/s; store CPU "
            f"{figures['store_cpu_percent']:.0f}%, bot {figures['bot_cpu_percent']:.0f}%, "
            f"producers {figures['producer_cpu_percent']:.0f}%"
        )
        print(analyse(read_traces(folder / "trace"), args.in_flight))


if __name__ == "__main__":
    main()
