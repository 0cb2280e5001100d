"""The built-in persona, the reply limits, and loading a responder from MODULE:ATTR."""

from __future__ import annotations

import sys
import types
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ackbot.bot.config import BotConfig
from ackbot.bot.responder import (
    IncomingMessage,
    PersonaResponder,
    ResponderLoadError,
    close_responder,
    create_responder,
    load_factory,
)
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, fit_text


def incoming(text: str, author: str = "alice") -> IncomingMessage:
    return IncomingMessage(id="m-1", author=author, text=text, attempt=1)


def assert_storable(reply: str, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> None:
    """What the store accepts as a message text."""
    assert reply
    assert len(reply.encode("utf-8")) <= max_bytes
    for char in reply:
        assert char in "\t\n\r" or unicodedata.category(char) not in ("Cc", "Cs"), repr(char)


PERSONA = PersonaResponder("Ava")


async def test_a_greeting_gets_a_greeting_by_name():
    reply = await PERSONA.reply(incoming("hello there", author="bob"))
    assert reply == "Hello, bob! Ava here. Good to hear from you."


@pytest.mark.parametrize("text", ["Hi!", "hey you", "Good morning, all", "HOWDY"])
def test_greetings_are_recognised(text):
    assert PERSONA.compose(incoming(text)).startswith("Hello, alice!")


async def test_a_question_is_acknowledged_with_a_quote():
    reply = await PERSONA.reply(incoming("What time is it?\n"))
    assert reply == "You asked: “What time is it?” Good question; noted."


def test_a_greeting_with_a_question_gets_both():
    reply = PERSONA.compose(incoming("hi, can you help?"))
    assert reply == "Hello, alice! Ava here. You asked: “hi, can you help?” Good question; noted."


async def test_anything_else_gets_an_acknowledgement_quoting_it():
    reply = await PERSONA.reply(incoming("the build is green\n\nagain"))
    assert reply == "Thanks, alice. Ava got your message: “the build is green again”"


def test_the_same_message_always_gets_the_same_reply():
    message = incoming("deterministic, please")
    assert {PersonaResponder("Ava").compose(message) for _ in range(5)} == {
        PERSONA.compose(message)
    }


def test_a_long_text_is_quoted_short():
    reply = PERSONA.compose(incoming("word " * 4000))
    assert len(reply) < 400
    assert "…" in reply
    assert_storable(reply)


def test_the_reply_stays_within_the_byte_limit_whatever_the_input():
    responder = PersonaResponder("Ava", max_bytes=100)
    reply = responder.compose(incoming("é" * 5000, author="ü" * 500))
    assert_storable(reply, max_bytes=100)


def test_control_characters_never_reach_the_reply():
    reply = PERSONA.compose(incoming("bell\x07 nul\x00 esc\x1b[31m", author="ev\x00e"))
    assert_storable(reply)
    assert "\x00" not in reply
    assert "\x1b" not in reply


@given(text=st.text(min_size=1), author=st.text(min_size=1, max_size=100))
def test_every_reply_is_storable(text, author):
    assert_storable(PERSONA.compose(incoming(text, author=author)))


@pytest.mark.parametrize(
    ("text", "max_bytes", "expected"),
    [
        ("plain", 100, "plain"),
        ("tab\tnew\nline\r", 100, "tab\tnew\nline\r"),
        ("a\x00b\x7fc\x85d", 100, "abcd"),
        ("lone \ud800 surrogate", 100, "lone  surrogate"),
        ("abcdef", 3, "abc"),
        ("ééé", 5, "é…"),  # never half a character; marked as cut
        ("€€", 4, "…"),
    ],
)
def test_fit_text(text, max_bytes, expected):
    assert fit_text(text, max_bytes) == expected


# -- loading ---------------------------------------------------------------------------------


@pytest.fixture
def plugin_module(monkeypatch):
    """A throwaway module holding factories, importable by name."""
    module = types.ModuleType("ackbot_test_plugin")

    class Echo:
        def __init__(self, config: BotConfig) -> None:
            self.config = config
            self.closed = False

        async def reply(self, message: IncomingMessage) -> str | None:
            return message.text

        async def aclose(self) -> None:
            self.closed = True

    async def async_factory(config: BotConfig) -> Echo:
        return Echo(config)

    module.Echo = Echo
    module.factory = Echo
    module.async_factory = async_factory
    module.no_reply = lambda config: object()
    module.not_callable = 42
    module.nested = types.SimpleNamespace(factory=Echo)
    monkeypatch.setitem(sys.modules, "ackbot_test_plugin", module)
    return module


async def test_without_responder_the_persona_answers():
    responder = await create_responder(BotConfig(persona="Ava"))
    assert isinstance(responder, PersonaResponder)


async def test_a_factory_gets_the_config(plugin_module):
    config = BotConfig(responder="ackbot_test_plugin:factory")
    responder = await create_responder(config)
    assert isinstance(responder, plugin_module.Echo)
    assert responder.config is config
    assert await responder.reply(incoming("echo")) == "echo"


async def test_an_async_factory_is_awaited(plugin_module):
    responder = await create_responder(BotConfig(responder="ackbot_test_plugin:async_factory"))
    assert isinstance(responder, plugin_module.Echo)


async def test_a_dotted_attribute_is_followed(plugin_module):
    responder = await create_responder(BotConfig(responder="ackbot_test_plugin:nested.factory"))
    assert isinstance(responder, plugin_module.Echo)


async def test_a_factory_must_return_something_with_reply(plugin_module):
    with pytest.raises(ResponderLoadError, match="no reply"):
        await create_responder(BotConfig(responder="ackbot_test_plugin:no_reply"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected MODULE:ATTR"),
        ("ackbot_no_such_module_anywhere:x", "cannot import"),
        ("ackbot_test_plugin:missing", "has no attribute"),
        ("ackbot_test_plugin:not_callable", "not callable"),
    ],
)
def test_bad_specs_are_reported(plugin_module, spec, message):
    with pytest.raises(ResponderLoadError, match=message):
        load_factory(spec)


async def test_close_calls_aclose_when_there_is_one(plugin_module):
    responder = plugin_module.Echo(BotConfig())
    await close_responder(responder)
    assert responder.closed
    await close_responder(PERSONA)  # no aclose: nothing to do


async def test_the_test_support_responders_load_by_name():
    config = BotConfig(persona="Ava")
    for name in ("always_fails", "fails_on_marker", "slow", "silent"):
        spec = f"ackbot.testing.responders:{name}"
        responder = await create_responder(config, load_factory(spec))
        assert callable(responder.reply)
