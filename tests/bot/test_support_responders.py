"""The responders integration tests plug into a real bot behave as their names say."""

from __future__ import annotations

import pytest

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import IncomingMessage
from ackbot.testing import responders

CONFIG = BotConfig(persona="Ava")


def incoming(text: str) -> IncomingMessage:
    return IncomingMessage(id="m-1", author="alice", text=text, attempt=1)


async def test_always_fails():
    with pytest.raises(RuntimeError, match="responder failed on purpose"):
        await responders.always_fails(CONFIG).reply(incoming("hello"))


async def test_fails_on_marker():
    responder = responders.fails_on_marker(CONFIG)
    with pytest.raises(RuntimeError, match="responder failed on purpose"):
        await responder.reply(incoming("please FAIL-ME now"))
    reply = await responder.reply(incoming("hello"))
    assert reply == "Hello, alice! Ava here. Good to hear from you."


async def test_slow_waits_then_answers(monkeypatch):
    monkeypatch.setenv("ACKBOT_TEST_RESPONDER_DELAY", "0.01")
    assert (await responders.slow(CONFIG).reply(incoming("hello"))).startswith("Hello, alice!")


async def test_silent():
    assert await responders.silent(CONFIG).reply(incoming("hello")) is None
