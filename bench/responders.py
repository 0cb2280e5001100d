"""Responders for benchmark bots, loaded with `--responder bench.responders:NAME`."""

from __future__ import annotations

import asyncio

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import IncomingMessage, PersonaResponder, Responder

# Stands for a remote model's answer time; Little's law gives the bot's bound from it.
SLOW_DELAY_SECONDS = 0.2


class _Slow:
    def __init__(self, persona: str) -> None:
        self._persona = PersonaResponder(persona)

    async def reply(self, message: IncomingMessage) -> str | None:
        await asyncio.sleep(SLOW_DELAY_SECONDS)
        return await self._persona.reply(message)


def slow(config: BotConfig) -> Responder:
    """Waits SLOW_DELAY_SECONDS, then answers as the built-in persona."""
    return _Slow(config.persona)
