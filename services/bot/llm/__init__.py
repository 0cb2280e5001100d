"""LLM backends: replies from a chat model, behind the Responder interface.

Two wire protocols, one behaviour:

- `OpenAIChatResponder` (`openai_chat`): any OpenAI-compatible chat-completions server (vLLM,
  llama.cpp's server, Ollama's /v1, hosted APIs), through the maintained `openai` client.
- `OllamaChatResponder` (`ollama_chat`): Ollama's native `POST /api/chat`, through `httpx2`.

What they share has a module per job: `settings` (the flags resolved into `ChatSettings`),
`failures` (what goes wrong, classified once: the table is its docstring), `chat` (the chat sent,
the empty-reply retry, the cut marker, the probe's model check). The names the rest of ackbot
uses are importable from here.
"""

from __future__ import annotations

import logging

from ackbot.bot.config import BotConfig
from ackbot.bot.llm.chat import CUT_MARKER, ChatResponder, Completion, split_thinking
from ackbot.bot.llm.failures import (
    LLMError,
    retry_after_seconds,
    safe_url,
    status_failure,
    transport_failure,
)
from ackbot.bot.llm.ollama_chat import OllamaChatResponder
from ackbot.bot.llm.openai_chat import OpenAIChatResponder
from ackbot.bot.llm.settings import (
    DEFAULT_OLLAMA_URL,
    DEFAULT_OPENAI_URL,
    DEFAULT_SYSTEM_PROMPT,
    BackendConfigError,
    ChatSettings,
    chat_settings,
    conventional_url,
)
from ackbot.bot.responder import Responder

__all__ = [
    "CUT_MARKER",
    "DEFAULT_OLLAMA_URL",
    "DEFAULT_OPENAI_URL",
    "DEFAULT_SYSTEM_PROMPT",
    "BackendConfigError",
    "ChatResponder",
    "ChatSettings",
    "Completion",
    "LLMError",
    "OllamaChatResponder",
    "OpenAIChatResponder",
    "chat_settings",
    "conventional_url",
    "create_llm_responder",
    "retry_after_seconds",
    "safe_url",
    "split_thinking",
    "status_failure",
    "transport_failure",
]

log = logging.getLogger(__name__)


def create_llm_responder(config: BotConfig) -> Responder:
    """The LLM responder --backend names; must run inside the event loop that will use it."""
    settings = chat_settings(config)
    log.info(
        "answering with %s model %s at %s (max %d tokens, timeout %gs)",
        settings.backend,
        settings.model,
        safe_url(settings.url),
        settings.max_tokens,
        settings.timeout_seconds,
    )
    if settings.backend == "openai":
        return OpenAIChatResponder(settings)
    return OllamaChatResponder(settings)
