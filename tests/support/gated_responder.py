"""A responder for a real bot that holds every reply until the test opens a gate: a file, named
by ACKBOT_TEST_GATE, that the test creates. Loaded with `--responder GATED`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import IncomingMessage, PersonaResponder, Responder

GATE_ENV = "ACKBOT_TEST_GATE"
GATED = f"{__name__}:gated"


class _Gated:
    def __init__(self, persona: str, gate: Path) -> None:
        self._persona = PersonaResponder(persona)
        self._gate = gate

    async def reply(self, message: IncomingMessage) -> str | None:
        # A file another process creates: there is nothing to wait on but its existence.
        while True:
            if self._gate.exists():
                return await self._persona.reply(message)
            await asyncio.sleep(0.05)  # poll


def gated(config: BotConfig) -> Responder:
    """Answers as the persona once the file named by ACKBOT_TEST_GATE exists."""
    return _Gated(config.persona, Path(os.environ[GATE_ENV]))
