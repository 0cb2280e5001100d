"""The bots' responder in the chaos run, loaded with `--responder chaos.responder:chaos`.

It answers as ackbot.testing's `fails_on_marker` does (raising on FAIL_MARKER, so those
messages must end DEAD), and takes longer than half a lease on messages that carry SLOW_MARKER,
so that the bot has to extend their leases while faults cut and stall its connection.
"""

from __future__ import annotations

import asyncio

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import IncomingMessage, Responder
from ackbot.testing.responders import fails_on_marker

SLOW_MARKER = "SLOW-ME"
# Past half the chaos bots' 4 s lease, where the bot extends it: each slow reply needs one
# ExtendLease. No longer than that, because any fault during a reply costs an attempt, and a
# message that keeps a bot busy long enough would die of faults alone (see faults.py).
SLOW_SECONDS = 2.5


class _Chaos:
    def __init__(self, inner: Responder) -> None:
        self._inner = inner

    async def reply(self, message: IncomingMessage) -> str | None:
        if SLOW_MARKER in message.text:
            await asyncio.sleep(SLOW_SECONDS)  # stands for a slow LLM call
        return await self._inner.reply(message)


def chaos(config: BotConfig) -> Responder:
    return _Chaos(fails_on_marker(config))
