"""The script language of the fake model server: the actions one request may get, the request
as the server saw it, and a script's turn-by-turn rule."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

# The routes of both APIs (wire.py serves them; a SeenRequest tells its API by them).
OPENAI_PATH = "/v1/chat/completions"
OLLAMA_PATH = "/api/chat"
OPENAI_MODELS_PATH = "/v1/models"
OLLAMA_TAGS_PATH = "/api/tags"


@dataclass(frozen=True)
class Reply:
    """A completion. `text` None answers with `answer_to(the user's text)`."""

    text: str | None = None
    finish_reason: str = "stop"
    # Sent in the thinking channel: `reasoning` (OpenAI-compatible) or `thinking` (Ollama).
    reasoning: str = ""


@dataclass(frozen=True)
class Thinks:
    """A thinking model that spends its whole budget thinking: only `reasoning` and empty
    content while thinking is on; `then` when the request turns thinking off (Ollama
    `think: false`; `reasoning_effort: "none"` or `chat_template_kwargs.enable_thinking: false`)."""

    reasoning: str = "Let me think about how to answer this."
    finish_reason: str = "length"
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Status:
    """An error status, with a Retry-After header when `retry_after` is set."""

    code: int
    retry_after: str | None = None
    message: str = "the fake model server says no"


@dataclass(frozen=True)
class Stall:
    """Waits `seconds` (past the client's timeout, typically), then answers `then`."""

    seconds: float
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Hold:
    """Waits until `gate` is set (or the server stops), then answers `then`."""

    gate: threading.Event
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Cut:
    """Closes the connection without an answer."""


Action = Reply | Thinks | Status | Stall | Hold | Cut


def answer_to(text: str) -> str:
    """The text of a default Reply."""
    return f"An answer to: {text}"


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it."""

    path: str
    body: dict[str, Any]
    # Header names in lower case.
    headers: dict[str, str]
    received_at: float

    @property
    def api(self) -> str:
        return "ollama" if self.path in (OLLAMA_PATH, OLLAMA_TAGS_PATH) else "openai"

    @property
    def user_text(self) -> str:
        """The content of the last user message."""
        messages = self.body.get("messages") or []
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    @property
    def thinking_off(self) -> bool:
        if self.api == "ollama":
            return self.body.get("think") is False
        template = self.body.get("chat_template_kwargs")
        return self.body.get("reasoning_effort") == "none" or (
            isinstance(template, dict) and template.get("enable_thinking") is False
        )


@dataclass
class Rule:
    match: str
    actions: list[Action]
    then: Action | None
    used: int = 0

    def next(self) -> Action:
        if self.used < len(self.actions):
            action = self.actions[self.used]
            self.used += 1
            return action
        return self.then if self.then is not None else self.actions[-1]
