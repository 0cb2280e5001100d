"""What answering a message costs the store in calls and transactions (issue 10): a store and a
bot process, N messages created by concurrent producers (or at a fixed rate), counted from the
store's metrics.

    python -m bench.settle_cost [--messages 2000] [--producers 16 | --rate 200] [--repeat 2]
        [--code DIR]

Prints, per answered message: the unary settling RPCs the store handled (MarkProcessed,
ReleaseMessage, ExtendLease), the requests it read on Consume sessions, its transactions
(group-commit batches, creates included) and the writes in them, the store's and the bot's CPU
milliseconds, and the messages answered per second from the first create to the last reply.
`--code DIR` also runs both processes from another copy of the `ackbot` package (DIR holds
`ackbot/`), e.g. the code before a change, interleaved run by run with this code: on a shared
machine the load of the moment moves the figures more than anything else does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from ackbot.testing import child_env, store_service, wait_until
from ackbot.testing.process import bot_service
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from bench.cpu import process_window
from bench.settings import log_as_deployed
from bench.workloads import server_pid

METRICS_ON = re.compile(r"metrics on (\S+):(\d+)")
SETTLING = ("MarkProcessed", "ReleaseMessage", "ExtendLease")


def scrape(log_text: str) -> dict[str, float]:
    match = METRICS_ON.search(log_text)
    assert match is not None, "the store did not say where its metrics are"
    url = f"http://{match.group(1)}:{match.group(2)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    figures: dict[str, float] = {
        "unary_settles": 0.0,
        "consume_requests": 0.0,
        "transactions": 0.0,
        "writes": 0.0,
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            method = sample.labels.get("grpc_method")
            if sample.name == "grpc_server_handled_total" and method in SETTLING:
                figures["unary_settles"] += sample.value
            elif sample.name == "grpc_server_msg_received_total" and method == "Consume":
                figures["consume_requests"] += sample.value
            elif sample.name == "ackbot_group_commit_batch_size_count":
                figures["transactions"] += sample.value
            elif sample.name == "ackbot_group_commit_batch_size_sum":
                figures["writes"] += sample.value
    return figures


async def one_run(
    messages: int, producers: int, rate: float, code: Path | None
) -> dict[str, float]:
    extra = {}
    if code is not None:
        extra["PYTHONPATH"] = os.pathsep.join([str(code), child_env()["PYTHONPATH"]])
    folder = Path(tempfile.mkdtemp(prefix="settle-cost-"))
    store = store_service(folder, args=["--metrics-listen", "127.0.0.1:0"], env=extra)
    await store.astart()
    try:
        bot = bot_service(folder, store.address, persona="bench", max_in_flight=16, env=extra)
        await bot.astart()
        try:
            async with grpc.aio.insecure_channel(store.address) as channel:
                stub = pb_grpc.MessageStoreStub(channel)
                before = await asyncio.to_thread(scrape, store.log_text())
                store_cpu = process_window(server_pid(store))
                bot_cpu = process_window(server_pid(bot))
                store_cpu.open()
                bot_cpu.open()
                started = time.perf_counter()
                ids = iter(range(messages))

                async def create(number: int) -> None:
                    message = pb.Message(id=f"m-{number}", author="bench", text="hello")
                    await stub.CreateMessage(pb.CreateMessageRequest(message=message))

                async def produce() -> None:
                    for number in ids:
                        await create(number)

                if rate > 0:
                    # Open loop at a fixed rate: the moderate load at which each settle used to
                    # run a transaction of its own.
                    creates = []
                    for number in range(messages):
                        delay = started + number / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)  # pacing
                        creates.append(asyncio.create_task(create(number)))
                    await asyncio.gather(*creates)
                else:
                    await asyncio.gather(*(produce() for _ in range(producers)))
                await wait_until(
                    lambda: _all_answered(stub), 600, interval=0.05, what="every answer"
                )
                seconds = time.perf_counter() - started
                store_cpu.close()
                bot_cpu.close()
                after = await asyncio.to_thread(scrape, store.log_text())
        finally:
            bot.terminate()
    finally:
        store.terminate()
    per = {key: (after[key] - before[key]) / messages for key in after}
    return {
        **per,
        "store_cpu_ms": 1000 * store_cpu.cpu_seconds / messages,
        "bot_cpu_ms": 1000 * bot_cpu.cpu_seconds / messages,
        "answered_per_second": messages / seconds,
    }


async def _all_answered(stub: pb_grpc.MessageStoreStub) -> bool:
    for state in (pb.MESSAGE_STATE_PENDING, pb.MESSAGE_STATE_LEASED):
        page = await stub.ListMessages(pb.ListMessagesRequest(state=state, page_size=1))
        if page.messages:
            return False
    return True


async def main_async(args: argparse.Namespace) -> None:
    variants: list[tuple[str, Path | None]] = [("this code", None)]
    if args.code is not None:
        variants.insert(0, (f"code in {args.code}", args.code))
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
    for _ in range(args.repeat):
        for label, code in variants:
            results[label].append(await one_run(args.messages, args.producers, args.rate, code))
    for label, runs in results.items():
        print(f"{label} ({len(runs)} runs of {args.messages} messages, per answered message):")
        for key in runs[0]:
            values = [run[key] for run in runs]
            print(f"  {key:22} median {statistics.median(values):9.3f}  runs {values}")


def main() -> None:
    log_as_deployed()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="creates per second, open loop (0: producers)"
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--code", type=Path, help="a folder holding another `ackbot` package")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
