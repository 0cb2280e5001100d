"""What both wire protocols share: the chat sent, the empty-reply retry, the cut marker and
the model-list check of the probe.

- An empty completion (no text, or only thinking): asked once more with thinking off, then
  `EmptyCompletion`, whose detail names the finish reason and how much reasoning came back.
- A reply cut by the token limit (finish reason "length"): kept, ending with CUT_MARKER.

The message's text only ever goes in the user role; the instructions are the system prompt.
A message of a conversation comes after the conversation's earlier turns (IncomingMessage.context):
the bot's own replies in the assistant role, everyone else's in the user role as "name: text",
and the message itself then as "name: text" too, since several people may talk in a thread.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ackbot.bot.llm.failures import CAUSE_MODEL_MISSING, LLMError, safe_url
from ackbot.bot.llm.settings import ChatSettings
from ackbot.bot.responder import DependencyDown, EmptyCompletion, IncomingMessage

log = logging.getLogger(__name__)

# Ends a reply the model stopped at the token limit, so a reader sees it was cut.
CUT_MARKER = "…"
# The openai client retries a failed request itself (a dropped connection, one 502) this many
# times; longer outages go through the store instead: release, backoff, DEAD after max attempts.
SDK_MAX_RETRIES = 1
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


def split_thinking(content: str) -> tuple[str, str]:
    """(answer, thinking) of a content that may start with an inline <think> block, as servers
    without a reasoning parser send it. A block never closed was all thinking."""
    stripped = content.lstrip()
    if not stripped.startswith(_THINK_OPEN):
        return content.strip(), ""
    thought, closed, rest = stripped[len(_THINK_OPEN) :].partition(_THINK_CLOSE)
    return (rest.strip() if closed else ""), thought


@dataclass(frozen=True)
class Completion:
    """One answer of the model, reduced to what the bot decides on."""

    text: str
    finish_reason: str
    reasoning_chars: int

    def describe(self) -> str:
        return (
            f"finish_reason={self.finish_reason or 'none'}, "
            f"{self.reasoning_chars} characters of reasoning"
        )


def completion(content: str | None, reasoning: str | None, finish_reason: str | None) -> Completion:
    text, inline = split_thinking(content or "")
    return Completion(
        text=text,
        finish_reason=finish_reason or "",
        reasoning_chars=len(reasoning or "") + len(inline),
    )


class ChatResponder(abc.ABC):
    """What both protocols share: the prompt, the empty-reply retry and the cut marker."""

    def __init__(self, settings: ChatSettings) -> None:
        self._settings = settings
        # Read by the bot (see Responder): how much of a conversation to hand over.
        self.context_turns = settings.context_turns
        self.context_chars = settings.context_chars
        # Called with (prompt tokens, completion tokens) of each answer that reports its usage
        # (the bot's metrics set it).
        self.on_usage: Callable[[int, int], None] | None = None

    def _count(self, prompt_tokens: object, completion_tokens: object) -> None:
        if self.on_usage is not None:
            prompt = prompt_tokens if isinstance(prompt_tokens, int) else 0
            done = completion_tokens if isinstance(completion_tokens, int) else 0
            if prompt > 0 or done > 0:
                self.on_usage(prompt, done)

    @property
    def url(self) -> str:
        """The model server's URL, as logs and errors may show it."""
        return safe_url(self._settings.url)

    def _chat(self, message: IncomingMessage) -> list[dict[str, str]]:
        """The system prompt, the conversation's earlier turns, then the message."""
        chat = [{"role": "system", "content": self._settings.system_prompt}]
        for turn in message.context:
            if turn.mine:
                chat.append({"role": "assistant", "content": turn.text})
            else:
                chat.append({"role": "user", "content": f"{turn.author}: {turn.text}"})
        text = message.text
        if message.conversation_id is not None:
            text = f"{message.author}: {text}"
        chat.append({"role": "user", "content": text})
        return chat

    async def reply(self, message: IncomingMessage) -> str | None:
        first = await self._complete(message, thinking_off=self._settings.thinking_off)
        if first.text:
            return self._finish(first, message)
        # Thinking models may spend the whole budget thinking, or put their answer in the
        # thinking channel: "" would mean "no answer" to the bot, so it is never returned.
        log.warning(
            "empty completion (%s); asking again with thinking off message_id=%s",
            first.describe(),
            message.id,
        )
        try:
            second = await self._complete(message, thinking_off=True)
        except LLMError as exc:
            raise EmptyCompletion(
                f"no text ({first.describe()}); the retry with thinking off failed: {exc}"
            ) from exc
        if second.text:
            return self._finish(second, message)
        raise EmptyCompletion(
            f"no text ({first.describe()}), nor with thinking off ({second.describe()})"
        )

    def _finish(self, answer: Completion, message: IncomingMessage) -> str:
        if answer.finish_reason != "length":
            return answer.text
        log.info(
            "reply cut at the token limit (%d tokens) message_id=%s",
            self._settings.max_tokens,
            message.id,
        )
        return answer.text.rstrip() + CUT_MARKER

    @abc.abstractmethod
    async def probe(self) -> None:
        """A cheap call (the model list): returns when the server answers and has the model,
        raises DependencyDown or LLMError naming the URL when not."""

    def _check_listed(self, names: list[str], url: str, *, empty_means_missing: bool) -> None:
        model = self._settings.model
        if model in names or f"{model}:latest" in names:
            return
        if not names and not empty_means_missing:
            return  # a server that lists nothing cannot say; the first answer will
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise DependencyDown(
            f"{url} has no model {model!r} (it lists: {shown or 'none'})",
            cause=CAUSE_MODEL_MISSING,
            target=url,
        )

    @abc.abstractmethod
    async def _complete(self, message: IncomingMessage, *, thinking_off: bool) -> Completion:
        """One request: the system prompt, then the message's text as the user's turn."""
