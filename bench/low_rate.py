"""The store's CPU per answered message at a low fixed rate, beside the echo server's CPU per
call under the same producer, alternated run by run (issue 22's target 2 alone, without the
rest of the end-to-end workload).

    python -m bench.low_rate [--rate 200] [--messages 2000] [--pairs 3]

Each pair runs the store (with one bot) and then the echo server; the ratio of a pair is taken
in one stretch of time, so a machine shared with other work loads both alike. Prints each pair
and the median ratio, with the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.settings import FULL, log_as_deployed
from bench.workloads import Context, _ackbot_end_to_end, _echo_at_rate


async def pairs(rate: float, messages: int, count: int) -> list[tuple[float, float]]:
    found = []
    with tempfile.TemporaryDirectory(prefix="ackbot-low-rate-") as folder:
        ctx = Context(settings=FULL, workdir=Path(folder))
        for _ in range(count):
            store = await _ackbot_end_to_end(ctx, count=messages, concurrency=1, rate=rate)
            echo = await _echo_at_rate(ctx, count=messages, rate=rate)
            pair = (store["store_cpu_ms_per_answered"], echo["server_cpu_ms_per_call"])
            print(
                f"store {pair[0]:.2f} ms per answered message (event loop thread "
                f"{store['store_loop_cpu_ms_per_answered']:.2f} ms, other threads "
                f"{pair[0] - store['store_loop_cpu_ms_per_answered']:.2f} ms), echo "
                f"{pair[1]:.2f} ms per call: {pair[0] / pair[1]:.2f}x (p50 create to reply "
                f"{store['latency']['p50_ms']:.2f} ms)",
                flush=True,
            )
            found.append(pair)
    return found


def main(argv: Sequence[str] | None = None) -> None:
    log_as_deployed()
    parser = argparse.ArgumentParser(prog="python -m bench.low_rate", description=__doc__)
    parser.add_argument("--rate", type=float, default=FULL.e2e_rate_per_second)
    parser.add_argument("--messages", type=int, default=FULL.e2e_rate_messages)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    found = asyncio.run(pairs(args.rate, args.messages, args.pairs))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(
        f"median: store {statistics.median(s for s, _ in found):.2f} ms, echo "
        f"{statistics.median(e for _, e in found):.2f} ms, ratio "
        f"{statistics.median(s / e for s, e in found):.2f}x"
    )


if __name__ == "__main__":
    main()
