"""Responders that misbehave on purpose, loaded by a real bot with `--responder
ackbot.testing.responders:NAME` (`spec(NAME)`). Each NAME takes the BotConfig and returns a
Responder, as every --responder factory does."""

from __future__ import annotations

import asyncio
import os

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import IncomingMessage, PersonaResponder, Responder

FAIL_MARKER = "FAIL-ME"
DELAY_ENV = "ACKBOT_TEST_RESPONDER_DELAY"
DEFAULT_DELAY_SECONDS = 2.0


class _AlwaysFails:
    async def reply(self, message: IncomingMessage) -> str | None:
        raise RuntimeError("responder failed on purpose")


class _FailsOnMarker:
    def __init__(self, persona: str) -> None:
        self._persona = PersonaResponder(persona)

    async def reply(self, message: IncomingMessage) -> str | None:
        if FAIL_MARKER in message.text:
            raise RuntimeError("responder failed on purpose")
        return await self._persona.reply(message)


class _Slow:
    def __init__(self, persona: str, delay_seconds: float) -> None:
        self._persona = PersonaResponder(persona)
        self._delay_seconds = delay_seconds

    async def reply(self, message: IncomingMessage) -> str | None:
        await asyncio.sleep(self._delay_seconds)
        return await self._persona.reply(message)


class _Silent:
    async def reply(self, message: IncomingMessage) -> str | None:
        return None


def always_fails(config: BotConfig) -> Responder:
    """Raises RuntimeError("responder failed on purpose") for every message."""
    return _AlwaysFails()


def fails_on_marker(config: BotConfig) -> Responder:
    """Fails like always_fails when the text contains FAIL-ME; otherwise answers as the persona."""
    return _FailsOnMarker(config.persona)


def slow(config: BotConfig) -> Responder:
    """Sleeps ACKBOT_TEST_RESPONDER_DELAY seconds (default 2.0), then answers as the persona."""
    delay = float(os.environ.get(DELAY_ENV) or DEFAULT_DELAY_SECONDS)
    return _Slow(config.persona, delay)


def silent(config: BotConfig) -> Responder:
    """Chooses never to answer: every message is marked processed without a reply."""
    return _Silent()


def spec(name: str) -> str:
    """The --responder value that loads the factory `name` from this module."""
    return f"{__name__}:{name}"
