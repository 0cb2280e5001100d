"""What the bot says: the Responder interface, the failures a responder may report, the
built-in offline persona, and the loader.

A responder sees plain data (IncomingMessage), never protobuf, so LLM backends and test doubles
depend on nothing but this module.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ackbot.bot.config import BotConfig
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES, fit_text

MAX_QUOTE_CHARS = 280
_GREETINGS = frozenset(
    {"hi", "hello", "hey", "hiya", "howdy", "greetings", "hola", "hallo", "bonjour", "ciao", "yo"}
)
_GOOD_TIMES = frozenset({"morning", "afternoon", "evening", "day"})
_WORD = re.compile(r"\w+")
_QUESTION_MARKS = ("?", "\uff1f")  # and the full-width mark of CJK text


@dataclass(frozen=True)
class Turn:
    """An earlier message of the conversation, as a responder sees it."""

    author: str
    text: str
    # The bot's own earlier reply (a reply written under its persona): the assistant's turn.
    mine: bool = False


@dataclass(frozen=True)
class IncomingMessage:
    """A message to answer, as a responder sees it."""

    id: str
    author: str
    text: str
    # Which delivery of the message this is, starting at 1: a responder may give up on a retry.
    attempt: int
    # The client's clock when it wrote the message (UTC), if it said.
    create_time: datetime | None = None
    conversation_id: str | None = None
    # The conversation's turns before this message, oldest first: filled only for a responder
    # that asks for them (`context_turns`), within its budget.
    context: tuple[Turn, ...] = ()


class RetryLater(Exception):
    """The backend asked to be called again later (HTTP 429 or 503): nothing is wrong with the
    message, so the attempt is given back.

    `delay_seconds` is the server's Retry-After, or None when it named none (the bot then backs
    off by itself).
    """

    def __init__(self, detail: str, delay_seconds: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.delay_seconds = delay_seconds


class DependencyDown(RetryLater):
    """What the responder depends on (the model server, an API, a database) is down or refuses
    the bot: nothing is wrong with the message. Raise it from a custom responder to say so.

    The message is handed back without a reason, which gives the attempt back (it is a
    RetryLater, so even a loop that knows nothing more never makes a message DEAD this way),
    and the bot's circuit breaker opens: it stops taking work, reports NOT_SERVING with
    `detail`, and probes until the dependency answers (ackbot.bot.breaker).

    `cause` is a short label for logs and metrics (`connect`, `auth`, `model_missing`, or the
    default `dependency`); `target` names what is down (a URL without credentials), if known.
    """

    def __init__(
        self,
        detail: str,
        *,
        cause: str = "dependency",
        target: str = "",
        delay_seconds: float | None = None,
    ) -> None:
        super().__init__(detail, delay_seconds)
        self.cause = cause
        self.target = target


class Blame(enum.Enum):
    """Whose failure a responder's exception is (docs/semantics.md, "Whose failure it is")."""

    # The message's: the attempt counts, and after the store's max attempts it is DEAD.
    MESSAGE = "message"
    # The dependency's (DependencyDown): no attempt spent; the breaker opens at once.
    DEPENDENCY = "dependency"
    # Busy or rate limited (RetryLater): no attempt spent; the breaker is not involved.
    BUSY = "busy"
    # A timeout or a 5xx: the message's, unless such failures hit several different messages in
    # a row (--model-failure-window): then the dependency's, and the breaker opens.
    SUSPECT = "suspect"


def blame(exc: BaseException) -> Blame:
    """Whose failure `exc` is. An exception may say so itself with a `blame` attribute (as the
    LLM backends' LLMError does); any other exception is the message's."""
    if isinstance(exc, DependencyDown):
        return Blame.DEPENDENCY
    if isinstance(exc, RetryLater):
        return Blame.BUSY
    own = getattr(exc, "blame", None)
    return own if isinstance(own, Blame) else Blame.MESSAGE


class EmptyCompletion(Exception):
    """The model answered with no text (nothing at all, or only its thinking), even when asked
    again with thinking off. A failure, never "no answer": `detail` says what came back."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Responder(Protocol):
    """Produces the reply to one message.

    `reply` may take seconds (the bot extends the lease meanwhile) and may be called for many
    messages at once. What it returns or raises decides what happens to the message
    (ackbot.bot.policy maps it; docs/semantics.md has the table):

    - text: the reply, stored as the answer (cut to the store's limit).
    - None or "": "no answer": the message is marked processed without a reply.
    - `DependencyDown`: the backend is down or refuses the bot (no server, a refused key, no such
      model). The message is handed back like RetryLater, and the bot stops taking work until
      its probe (below) says the backend answers again.
    - `RetryLater`: the backend is busy or rate limited. The message is handed back without a
      reason, which gives the attempt back (it can never go DEAD this way), to come back after
      the server's delay, or after a backoff when it named none.
    - `EmptyCompletion`, or any other exception (a timeout, an HTTP 5xx, a 4xx about the
      request): a failure. The message is released with the reason as its last error and
      retried after a growing delay; the attempt counts, so after the store's max attempts it is
      DEAD. Timeouts and 5xx that hit several different messages in a row are the model's
      instead (`Blame.SUSPECT`, decided by ackbot.bot.breaker).

    A responder that holds clients may also define `async def aclose(self) -> None`; the bot
    calls it on shutdown. One that can check its backend cheaply defines
    `async def probe(self) -> None`, which returns when the backend answers and raises
    DependencyDown (or any exception) when not: the bot calls it before it takes work and while
    the breaker is open. Without one, the bot simply tries again after a backoff.

    One that wants a conversation's earlier turns defines
    `context_turns` and `context_chars` (ints): the bot then reads up to that many turns, that
    many characters in all, into `IncomingMessage.context`.
    """

    async def reply(self, message: IncomingMessage) -> str | None: ...


ResponderFactory = Callable[[BotConfig], "Responder | Awaitable[Responder]"]


class ResponderLoadError(Exception):
    """The --responder value cannot be turned into a responder."""


def _quote(text: str, max_chars: int = MAX_QUOTE_CHARS) -> str:
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    return flat[: max_chars - 1].rstrip() + "…"


def _is_greeting(text: str) -> bool:
    words = [word.lower() for word in _WORD.findall(text[:64])]
    if not words:
        return False
    return words[0] in _GREETINGS or (
        words[0] == "good" and len(words) > 1 and words[1] in _GOOD_TIMES
    )


class PersonaResponder:
    """The built-in responder: deterministic and offline, it answers from the message text.

    A greeting gets a greeting by name, a question an acknowledgement that quotes it, anything
    else a short acknowledgement with a quote. The same message always gets the same reply.
    """

    def __init__(self, persona: str, *, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> None:
        self._persona = persona
        self._max_bytes = max_bytes

    async def reply(self, message: IncomingMessage) -> str | None:
        return self.compose(message)

    def compose(self, message: IncomingMessage) -> str:
        author = message.author.strip() or "there"
        quote = _quote(message.text)
        parts: list[str] = []
        if _is_greeting(message.text):
            parts.append(f"Hello, {author}! {self._persona} here.")
        if message.text.rstrip().endswith(_QUESTION_MARKS):
            parts.append(f"You asked: “{quote}” Good question; noted.")
        elif not parts:
            parts.append(f"Thanks, {author}. {self._persona} got your message: “{quote}”")
        else:
            parts.append("Good to hear from you.")
        return fit_text(" ".join(parts), self._max_bytes)


def load_factory(spec: str) -> ResponderFactory:
    """Imports MODULE:ATTR (ATTR may be dotted) and returns the callable it names."""
    module_name, sep, attr_path = spec.partition(":")
    if not (sep and module_name and attr_path):
        raise ResponderLoadError(f"expected MODULE:ATTR, got {spec!r}")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # a module may fail to import in any way; report it as the flag's
        raise ResponderLoadError(f"cannot import {module_name!r}: {exc}") from exc
    for name in attr_path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ResponderLoadError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ResponderLoadError(f"{spec} is not callable")
    return target


async def create_responder(config: BotConfig, factory: ResponderFactory | None = None) -> Responder:
    """Makes the configured responder inside the running loop (a backend may open clients).

    `factory` defaults to the one --responder names; without one, --backend decides: the
    persona, or an LLM backend (ackbot.bot.llm).
    """
    if factory is None:
        if config.responder is None:
            if config.backend == "persona":
                return PersonaResponder(config.persona)
            # Imported here: the HTTP clients cost start-up time the persona does not need.
            from ackbot.bot.llm import create_llm_responder

            return create_llm_responder(config)
        factory = load_factory(config.responder)
    made = factory(config)
    if inspect.isawaitable(made):
        made = await made
    if not callable(getattr(made, "reply", None)):
        raise ResponderLoadError(
            f"{config.responder or factory!r} returned {type(made).__name__}, which has no reply()"
        )
    return made


async def close_responder(responder: Responder) -> None:
    aclose = getattr(responder, "aclose", None)
    if callable(aclose):
        await aclose()
