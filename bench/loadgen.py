"""The load generator: a client process of its own, the same code for every target.

The machine has two cores; a client in the server's process would take the server's CPU, and a
client that differs between echo and store would make their ratio meaningless. So every load runs
here, in a separate process, through one generic grpc.aio stub on one channel: only the method
path differs between the echo ceiling and CreateMessage. The peers' producers follow the same
loop with XADD (Redis) or INSERT (PostgreSQL) in place of the RPC; `PRODUCERS` names them all.

The coordinator (`run_loadgen`) passes a JSON spec as the only argument and reads JSON lines from
stdout: `{"event": "measuring"}` when the measured window opens (so it can sample the server's
CPU over the same window), then `{"event": "done", ...}` with the figures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ackbot.common import trace
from ackbot.v1 import message_store_pb2 as pb

STORE_CREATE_METHOD = "/ackbot.v1.MessageStore/CreateMessage"
# A benchmark call that takes this long means a wedged server, not a slow one.
CALL_TIMEOUT = 30.0
TEXT = "hello from the benchmark, message {n}"


@dataclass
class Spec:
    mode: str  # "unary" | "stream" | "produce"
    # HOST:PORT of a gRPC server or a Redis; for the "postgres" producer, a libpq DSN
    address: str = ""
    method: str = STORE_CREATE_METHOD
    concurrency: int = 1
    warmup_seconds: float = 0.0
    measure_seconds: float = 0.0
    # produce: how many messages, and at what rate (0 = closed loop, as fast as answered)
    count: int = 0
    rate_per_second: float = 0.0
    id_prefix: str = "bench"
    # produce: where to write [[id, create_returned_time_ns], ...]
    times_path: str = ""
    # produce: which of PRODUCERS creates the messages, and the Redis stream key or the
    # PostgreSQL table it creates them in
    producer: str = "grpc"
    queue: str = ""
    # produce, closed loop: messages each producer task sends per round trip (a Redis
    # pipeline); 1 is a call per message
    per_round_trip: int = 1


@dataclass
class Result:
    calls: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    # concurrency 1 only: percentiles of the call latency (a summary: the list can be long)
    latency: dict[str, float | None] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0


def percentiles(values_ms: Sequence[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values_ms)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": ordered[-1]}


def message_id(id_prefix: str, worker: int, n: int) -> str:
    return f"{id_prefix}-{worker}-{n}"


def create_request(id_prefix: str, worker: int, n: int) -> pb.CreateMessageRequest:
    return pb.CreateMessageRequest(
        message=pb.Message(
            id=message_id(id_prefix, worker, n), author=f"producer{worker}", text=TEXT.format(n=n)
        )
    )


def announce(event: dict[str, Any]) -> None:
    """One JSON line to the coordinator (see `run_child`)."""
    print(json.dumps(event), flush=True)


async def _create_call(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[Any, pb.CreateMessageResponse]:
    """CreateMessage, or the echo's copy of it, through a generic stub on a connected channel."""
    call = channel.unary_unary(
        method,
        request_serializer=pb.CreateMessageRequest.SerializeToString,
        response_deserializer=pb.CreateMessageResponse.FromString,
    )
    await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
    return call


async def _unary(spec: Spec) -> Result:
    """Closed loop: `concurrency` tasks each call, wait, call again; counts calls that end in
    the measured window."""
    result = Result()
    latencies_ms: list[float] = []
    window: dict[str, float] = {}
    stop_at = time.monotonic() + spec.warmup_seconds + spec.measure_seconds
    async with grpc.aio.insecure_channel(spec.address) as channel:
        call = await _create_call(channel, spec.method)

        async def open_window() -> None:
            await asyncio.sleep(spec.warmup_seconds)
            window["start"] = time.monotonic()
            window["cpu"] = time.process_time()
            announce({"event": "measuring"})

        async def worker(number: int) -> None:
            n = 0
            while (now := time.monotonic()) < stop_at:
                n += 1
                try:
                    await call(create_request(spec.id_prefix, number, n), timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    result.errors += 1
                    result.first_error = result.first_error or f"{exc.code().name}: {exc.details()}"
                    continue
                if "start" in window:
                    result.calls += 1
                    if spec.concurrency == 1:
                        latencies_ms.append((time.monotonic() - now) * 1e3)

        await asyncio.gather(open_window(), *(worker(n) for n in range(spec.concurrency)))
    result.seconds = time.monotonic() - window["start"]
    result.client_cpu_seconds = time.process_time() - window["cpu"]
    if latencies_ms:
        result.latency = percentiles(latencies_ms)
    return result


async def _stream(spec: Spec) -> Result:
    """One server stream, read as fast as it comes; counts deliveries in the measured window."""
    result = Result()
    async with grpc.aio.insecure_channel(spec.address) as channel:
        stream = channel.unary_stream(
            spec.method,
            request_serializer=pb.StreamUnprocessedRequest.SerializeToString,
            response_deserializer=pb.StreamUnprocessedResponse.FromString,
        )
        call = stream(pb.StreamUnprocessedRequest(consumer="bench"))
        warm_until = time.monotonic() + spec.warmup_seconds
        start = cpu = 0.0
        async for response in call:
            now = time.monotonic()
            if not start and now >= warm_until:
                start, cpu = now, time.process_time()
                announce({"event": "measuring"})
            elif start:
                result.calls += len(response.deliveries)
                if now - start >= spec.measure_seconds:
                    break
        call.cancel()
    result.seconds = time.monotonic() - start
    result.client_cpu_seconds = time.process_time() - cpu
    return result


# Sends one round trip: creates the messages numbered `numbers` for producer task `worker`.
Send = Callable[[int, Sequence[int]], Awaitable[None]]


async def _produce(spec: Spec, send: Send) -> Result:
    """Creates `count` messages, closed loop from `concurrency` tasks (each sending
    `per_round_trip` messages per round trip) or open loop at `rate_per_second`; writes each
    id's wall-clock time at the moment its create returned."""
    result = Result()
    returned: list[tuple[str, int]] = []

    async def one_trip(worker: int, numbers: Sequence[int]) -> None:
        try:
            await send(worker, numbers)
        except Exception as exc:  # any client error counts; the run goes on and reports it
            result.errors += len(numbers)
            result.first_error = result.first_error or repr(exc)
            return
        now = time.time_ns()
        returned.extend((message_id(spec.id_prefix, worker, n), now) for n in numbers)

    announce({"event": "measuring"})
    start, cpu = time.monotonic(), time.process_time()
    result.start_ns = time.time_ns()
    if spec.rate_per_second > 0:
        tasks = []
        for n in range(spec.count):
            # Open loop: each create starts on its schedule whatever the earlier ones do, so a
            # slow answer cannot hide queueing by slowing the arrivals down.
            delay = start + n / spec.rate_per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_trip(0, [n])))
        await asyncio.gather(*tasks)
    else:

        async def worker(number: int) -> None:
            mine = range(number, spec.count, spec.concurrency)
            for first in range(0, len(mine), spec.per_round_trip):
                await one_trip(number, mine[first : first + spec.per_round_trip])

        await asyncio.gather(*(worker(n) for n in range(spec.concurrency)))
    result.end_ns = time.time_ns()
    result.seconds = time.monotonic() - start
    result.client_cpu_seconds = time.process_time() - cpu
    result.calls = len(returned)
    await asyncio.to_thread(Path(spec.times_path).write_text, json.dumps(returned))
    return result


async def _produce_grpc(spec: Spec) -> Result:
    """CreateMessage (or `spec.method`), one unary call per message."""
    async with grpc.aio.insecure_channel(spec.address) as channel:
        call = await _create_call(channel, spec.method)

        async def send(worker: int, numbers: Sequence[int]) -> None:
            for n in numbers:
                await call(create_request(spec.id_prefix, worker, n), timeout=CALL_TIMEOUT)

        return await _produce(spec, send)


def _fields(spec: Spec, worker: int, n: int) -> dict[str, str]:
    message = create_request(spec.id_prefix, worker, n).message
    return {"id": message.id, "author": message.author, "text": message.text}


async def _produce_redis(spec: Spec) -> Result:
    """XADD to the stream `spec.queue`; several per round trip are one pipeline (not a
    transaction: like separate calls, each entry is added or not on its own)."""
    from redis.asyncio import Redis

    host, _, port = spec.address.rpartition(":")
    client = Redis(host=host, port=int(port))
    try:

        async def send(worker: int, numbers: Sequence[int]) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for n in numbers:
                    pipe.xadd(spec.queue, _fields(spec, worker, n))  # type: ignore[arg-type]
                await pipe.execute()

        return await _produce(spec, send)
    finally:
        await client.aclose()


async def _produce_postgres(spec: Spec) -> Result:
    """INSERT into the table `spec.queue` (bench.pg_peer's), each its own transaction, through
    a pool of a connection per producer task (pg_peer.MAX_CONNECTIONS at most)."""
    from bench import pg_peer

    pool = await pg_peer.pool(spec.address, size=spec.concurrency)
    try:

        async def send(worker: int, numbers: Sequence[int]) -> None:
            for n in numbers:
                await pg_peer.insert(pool, spec.queue, _fields(spec, worker, n))

        return await _produce(spec, send)
    finally:
        await pool.close()


async def _produce_batched(spec: Spec) -> Result:
    """ackbot.client's Publisher: each producer task publishes its round trip's messages and
    waits for their futures; the Publisher gathers what all tasks publish meanwhile into
    BatchCreateMessages calls (its default batch settings), as an internal service would."""
    from ackbot.client import Client, Publisher

    async with Client.connect(spec.address) as client, Publisher(client) as publisher:

        async def send(worker: int, numbers: Sequence[int]) -> None:
            futures = []
            for n in numbers:
                message = create_request(spec.id_prefix, worker, n).message
                if trace.ENABLED:
                    trace.mark("publish", message.id)
                # publish_async: waits for room under the Publisher's flow control.
                futures.append(
                    await publisher.publish_async(
                        message.text, author=message.author, id=message.id
                    )
                )
            await asyncio.gather(*futures)
            if trace.ENABLED:
                trace.mark_all("returned", [f.result().message.id for f in futures])

        return await _produce(spec, send)


# How each kind of producer creates messages (Spec.producer): one function of the spec.
PRODUCERS: dict[str, Callable[[Spec], Awaitable[Result]]] = {
    "grpc": _produce_grpc,
    "batched": _produce_batched,
    "redis": _produce_redis,
    "postgres": _produce_postgres,
}


async def _run(spec: Spec) -> Result:
    if spec.mode == "unary":
        return await _unary(spec)
    if spec.mode == "stream":
        return await _stream(spec)
    if spec.mode == "produce":
        return await PRODUCERS[spec.producer](spec)
    raise ValueError(f"unknown mode {spec.mode!r}")


def main() -> None:
    spec = Spec(**json.loads(sys.argv[1]))
    result = asyncio.run(_run(spec))
    announce({"event": "done", **asdict(result)})


# -- the coordinator's side ---------------------------------------------------------------------


# Longest JSON line a child may send; results are summaries, far below it.
CHILD_LINE_LIMIT = 16 * 2**20


class ChildError(RuntimeError):
    """A benchmark child process failed; the message carries its stderr."""


async def run_child(
    module: str,
    payload: dict[str, Any],
    env: dict[str, str],
    on_measuring: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Runs `python -m module PAYLOAD_JSON` to the end and returns its `done` event; calls
    `on_measuring` when the child says its measured window opens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        json.dumps(payload),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        limit=CHILD_LINE_LIMIT,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stderr_task = asyncio.create_task(process.stderr.read())
    done: dict[str, Any] | None = None
    try:
        async for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "measuring":
                on_measuring()
            elif event["event"] == "done":
                done = event
        code = await process.wait()
    finally:
        if process.returncode is None:
            # Cancelled (another part of the workload failed): no orphan load on the machine.
            process.kill()
            await process.wait()
    stderr = (await stderr_task).decode(errors="replace")
    if code != 0 or done is None:
        raise ChildError(f"{module} exited {code}:\n{stderr[-3000:]}")
    done.pop("event")
    return done


async def run_loadgen(
    spec: Spec, env: dict[str, str], on_measuring: Callable[[], None] = lambda: None
) -> Result:
    """Runs one load generator process; see `run_child`."""
    return Result(**await run_child("bench.loadgen", asdict(spec), env, on_measuring))


if __name__ == "__main__":
    main()
