"""Helpers for the bot's tests against an in-process store: waiting on conditions, the RPCs the
tests check outcomes with, and a worker running for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ackbot.bot.policy import Worker
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

T = TypeVar("T")

RPC_TIMEOUT = 10.0
# Generous: the machine may be busy; each wait returns as soon as its condition holds.
WITHIN = 30.0


async def wait_until(
    condition: Callable[[], T | Awaitable[T]], *, what: str, within: float = WITHIN
) -> T:
    """Polls `condition` until it returns something truthy, and returns that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {within:g}s waiting for {what}")
        await asyncio.sleep(0.02)  # poll


async def wait_event(event: asyncio.Event, *, what: str, within: float = WITHIN) -> None:
    try:
        await asyncio.wait_for(event.wait(), within)
    except TimeoutError:
        raise AssertionError(f"gave up after {within:g}s waiting for {what}") from None


async def create(stub: pb_grpc.MessageStoreStub, message_id: str, text: str) -> pb.Message:
    response = await stub.CreateMessage(
        pb.CreateMessageRequest(message=pb.Message(id=message_id, author="tester", text=text)),
        timeout=RPC_TIMEOUT,
    )
    return response.message


async def get(stub: pb_grpc.MessageStoreStub, message_id: str) -> pb.Message:
    response = await stub.GetMessage(pb.GetMessageRequest(id=message_id), timeout=RPC_TIMEOUT)
    return response.message


async def replies_to(stub: pb_grpc.MessageStoreStub, message_id: str) -> list[pb.Message]:
    response = await stub.ListMessages(
        pb.ListMessagesRequest(reply_to=message_id), timeout=RPC_TIMEOUT
    )
    return list(response.messages)


async def wait_state(
    stub: pb_grpc.MessageStoreStub, message_id: str, state: int, *, within: float = WITHIN
) -> pb.Message:
    async def reached() -> pb.Message | None:
        message = await get(stub, message_id)
        return message if message.state == state else None

    return await wait_until(
        reached, what=f"{message_id} in {pb.MessageState.Name(state)}", within=within
    )


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Runs `worker` for the block, then stops it gracefully; a worker that failed fails the
    test."""
    task = asyncio.create_task(worker.run(), name="test-worker")
    try:
        await wait_until(
            lambda: worker.connected or task.done(), what="the worker's stream to open"
        )
        if task.done():
            task.result()  # a worker that failed at start
        yield worker
    finally:
        await worker.stop()
        await task


def closed_port() -> int:
    """A port nothing listens on (free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
