"""The peers' consumer loop, the bot's counterpart (bench.peer on Redis, bench.pg_peer on
PostgreSQL): claims at most its free room, answers each claimed message with the bot's built-in
persona in a task of its own, and settles it; stops when `count` are settled.

It announces `measuring` (bench.loadgen's protocol) once it is about to claim, and returns its
figures for the `done` event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ackbot.bot.responder import IncomingMessage, PersonaResponder
from bench.loadgen import announce

Claimed = TypeVar("Claimed")


async def reply_text(responder: PersonaResponder, id: str, author: str, text: str) -> str:
    """What the bot would answer: the persona's reply to a first delivery."""
    message = IncomingMessage(id=id, author=author, text=text, attempt=1)
    return await responder.reply(message) or ""


async def consume(
    count: int,
    max_in_flight: int,
    claim: Callable[[int], Awaitable[Sequence[Claimed]]],
    settle: Callable[[Claimed], Awaitable[None]],
) -> dict[str, Any]:
    """`claim(room)` returns up to `room` messages (waiting a little for some, if none);
    `settle(message)` answers one and commits the answer. The first error ends the run."""
    changed = asyncio.Condition()
    in_flight = settled = 0
    failures: list[BaseException] = []

    async def one(message: Claimed) -> None:
        nonlocal in_flight, settled
        try:
            await settle(message)
            settled += 1
        except Exception as exc:  # reported at the end; the run cannot count this message
            failures.append(exc)
        async with changed:
            in_flight -= 1
            changed.notify_all()

    def has_room() -> bool:
        return in_flight < max_in_flight

    tasks: set[asyncio.Task[None]] = set()
    announce({"event": "measuring"})
    start, cpu = time.monotonic(), time.process_time()
    while settled < count and not failures:
        async with changed:
            await changed.wait_for(has_room)
            room = max_in_flight - in_flight
        for message in await claim(room):
            in_flight += 1
            task = asyncio.create_task(one(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    if failures:
        raise failures[0]
    return {
        "settled": settled,
        "seconds": time.monotonic() - start,
        "cpu_seconds": time.process_time() - cpu,
    }
