"""LLM backends: replies from a chat model, behind the Responder interface.

Two wire protocols, one behaviour:

- `OpenAIChatResponder`: any OpenAI-compatible chat-completions server (vLLM, llama.cpp's
  server, Ollama's /v1, hosted APIs), through the maintained `openai` client.
- `OllamaChatResponder`: Ollama's native `POST /api/chat`, through `httpx2` (the HTTP client the
  `openai` package is built on), because Ollama's own client drops the response headers, and
  with them Retry-After.

What goes wrong is classified here, and what each class means for the message is decided in
ackbot.bot.delivery (the Responder docstring has the list):

- HTTP 429 or 503, with or without Retry-After: `RetryLater` (the attempt is given back).
- An empty completion (no text, or only thinking): asked once more with thinking off, then
  `EmptyCompletion`, whose detail names the finish reason and how much reasoning came back.
- A timeout, a connection error, any other HTTP error: `LLMError` (a failure that counts).
- A reply cut by the token limit (finish reason "length"): kept, ending with CUT_MARKER.

The message's text only ever goes in the user role; the instructions are the system prompt.
A message of a conversation comes after the conversation's earlier turns (IncomingMessage.context):
the bot's own replies in the assistant role, everyone else's in the user role as "name: text",
and the message itself then as "name: text" too, since several people may talk in a thread.
"""

from __future__ import annotations

import abc
import email.utils
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from ackbot.bot.config import API_KEY_ENV, BotConfig
from ackbot.bot.responder import EmptyCompletion, IncomingMessage, Responder, RetryLater

log = logging.getLogger(__name__)

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
DEFAULT_SYSTEM_PROMPT = (
    "You are {persona}, who answers the messages people post in a chat. Answer each message in "
    "a few friendly, helpful sentences."
)
# Ends a reply the model stopped at the token limit, so a reader sees it was cut.
CUT_MARKER = "…"
# The openai client retries a failed request itself (a dropped connection, one 502) this many
# times; longer outages go through the store instead: release, backoff, DEAD after max attempts.
SDK_MAX_RETRIES = 1
# Sent as the API key when none is configured: the openai client insists on one, and local
# servers ignore it.
NO_API_KEY = "no-key"
# How much of an error body goes into a last_error (the store keeps 1024 characters in all).
MAX_ERROR_BODY_CHARS = 300
# Statuses that mean "busy, come back later": rate limited, or overloaded (Ollama answers 503
# when its queue, OLLAMA_MAX_QUEUE, is full).
RETRY_LATER_STATUSES = frozenset({429, 503})
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


class LLMError(Exception):
    """A request to the model server failed: timeout, connection, or an HTTP error status."""


class BackendConfigError(Exception):
    """The flags do not make a usable LLM backend (the message names the flag)."""


@dataclass(frozen=True)
class ChatSettings:
    """What an LLM backend needs, resolved from the bot's config (see `chat_settings`)."""

    backend: str
    url: str
    model: str
    system_prompt: str
    max_tokens: int
    temperature: float | None
    timeout_seconds: float
    thinking_off: bool
    no_think_params: Mapping[str, Any]
    context_turns: int = 0
    context_chars: int = 0
    # Never logged: repr=False keeps it out of any repr of the settings.
    api_key: str = field(default="", repr=False)


def chat_settings(config: BotConfig, env: Mapping[str, str] | None = None) -> ChatSettings:
    """Resolves the LLM settings: URL default, system prompt, API key (from the file or the
    ACKBOT_BOT_LLM_API_KEY variable). Raises BackendConfigError naming the flag at fault."""
    env = os.environ if env is None else env
    if config.backend not in ("openai", "ollama"):
        raise BackendConfigError(f"--backend {config.backend} is not an LLM backend")
    if config.responder is not None:
        raise BackendConfigError(f"--responder and --backend {config.backend} exclude each other")
    if not config.llm_model:
        raise BackendConfigError(f"--backend {config.backend} needs --llm-model")
    default_url = DEFAULT_OPENAI_URL if config.backend == "openai" else DEFAULT_OLLAMA_URL
    url = (config.llm_url or default_url).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendConfigError(f"--llm-url must be an http(s) URL, got {safe_url(url)!r}")
    if config.system_prompt and config.system_prompt_file is not None:
        raise BackendConfigError("--system-prompt and --system-prompt-file exclude each other")
    prompt = config.system_prompt or DEFAULT_SYSTEM_PROMPT
    if config.system_prompt_file is not None:
        prompt = _read(config.system_prompt_file, "--system-prompt-file").strip()
        if not prompt:
            raise BackendConfigError(f"--system-prompt-file {config.system_prompt_file} is empty")
    api_key = env.get(API_KEY_ENV, "")
    if config.llm_api_key_file is not None:
        api_key = _read(config.llm_api_key_file, "--llm-api-key-file")
    return ChatSettings(
        backend=config.backend,
        url=url,
        model=config.llm_model,
        # replace, not format: a prompt may well contain other braces.
        system_prompt=prompt.replace("{persona}", config.persona),
        max_tokens=config.llm_max_tokens,
        temperature=config.llm_temperature,
        timeout_seconds=config.llm_timeout_seconds,
        thinking_off=config.llm_thinking == "off",
        no_think_params=json.loads(config.llm_no_think_params),
        context_turns=config.llm_context_turns,
        context_chars=config.llm_context_chars,
        api_key=api_key.strip(),
    )


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        # The error names the file, never its content (it may be a key).
        raise BackendConfigError(f"cannot read {flag} {path}: {type(exc).__name__}") from None


def safe_url(url: str) -> str:
    """The URL without user, password or query: what may appear in logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """A response's Retry-After (or the nonstandard retry-after-ms) in seconds; None when it
    names no usable delay."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return max(value, 0.0) if math.isfinite(value) else None


def split_thinking(content: str) -> tuple[str, str]:
    """(answer, thinking) of a content that may start with an inline <think> block, as servers
    without a reasoning parser send it. A block never closed was all thinking."""
    stripped = content.lstrip()
    if not stripped.startswith(_THINK_OPEN):
        return content.strip(), ""
    thought, closed, rest = stripped[len(_THINK_OPEN) :].partition(_THINK_CLOSE)
    return (rest.strip() if closed else ""), thought


def _short(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= MAX_ERROR_BODY_CHARS:
        return flat
    return flat[: MAX_ERROR_BODY_CHARS - 1] + "…"


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


class _ChatResponder(abc.ABC):
    """What both protocols share: the prompt, the empty-reply retry and the cut marker."""

    def __init__(self, settings: ChatSettings) -> None:
        self._settings = settings
        # Read by the bot (see Responder): how much of a conversation to hand over.
        self.context_turns = settings.context_turns
        self.context_chars = settings.context_chars

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
    async def _complete(self, message: IncomingMessage, *, thinking_off: bool) -> Completion:
        """One request: the system prompt, then the message's text as the user's turn."""


class OpenAIChatResponder(_ChatResponder):
    """Answers through an OpenAI-compatible `POST {url}/chat/completions` (non-streaming)."""

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__(settings)
        self._client = openai.AsyncOpenAI(
            base_url=settings.url,
            api_key=settings.api_key or NO_API_KEY,
            timeout=settings.timeout_seconds,
            max_retries=SDK_MAX_RETRIES,
        )

    async def _complete(self, message: IncomingMessage, *, thinking_off: bool) -> Completion:
        settings = self._settings
        messages = cast(list[ChatCompletionMessageParam], self._chat(message))
        try:
            response = await self._client.chat.completions.create(
                model=settings.model,
                messages=messages,
                # max_tokens, not max_completion_tokens: every local server reads it, and some
                # (llama-cpp-python, older llama.cpp) ignore the newer name.
                max_tokens=settings.max_tokens,
                temperature=openai.omit if settings.temperature is None else settings.temperature,
                # Untyped fields: servers spell "don't think" differently (--llm-no-think-params).
                extra_body=dict(settings.no_think_params) if thinking_off else None,
                stream=False,
            )
        except openai.APITimeoutError:
            raise LLMError(f"no answer within {settings.timeout_seconds:g}s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise LLMError(f"connection failed: {type(cause).__name__}: {cause}") from None
        except openai.APIStatusError as exc:
            detail = f"HTTP {exc.status_code}: {_short(_openai_error(exc))}"
            if exc.status_code in RETRY_LATER_STATUSES:
                raise RetryLater(detail, retry_after_seconds(exc.response.headers)) from None
            raise LLMError(detail) from None
        except openai.APIError as exc:
            raise LLMError(f"unusable answer: {_short(str(exc))}") from None
        if not response.choices:
            return completion(None, None, "no choices")
        choice = response.choices[0]
        reply = choice.message
        extra = reply.model_extra or {}
        # Servers name the thinking channel differently: "reasoning" (vLLM, Ollama's /v1),
        # "reasoning_content" (llama.cpp, DeepSeek).
        reasoning = extra.get("reasoning") or extra.get("reasoning_content")
        content = reply.content or reply.refusal
        return completion(
            content, reasoning if isinstance(reasoning, str) else None, choice.finish_reason
        )

    async def aclose(self) -> None:
        await self._client.close()


class OllamaChatResponder(_ChatResponder):
    """Answers through Ollama's native `POST {url}/api/chat` (non-streaming)."""

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__(settings)
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._client = httpx2.AsyncClient(
            base_url=settings.url,
            headers=headers,
            timeout=settings.timeout_seconds,
            # Like the openai client's own retry, one more try when the connection fails.
            transport=httpx2.AsyncHTTPTransport(retries=SDK_MAX_RETRIES),
        )

    async def _complete(self, message: IncomingMessage, *, thinking_off: bool) -> Completion:
        settings = self._settings
        messages = self._chat(message)
        options: dict[str, Any] = {"num_predict": settings.max_tokens}
        if settings.temperature is not None:
            options["temperature"] = settings.temperature
        body: dict[str, Any] = {
            "model": settings.model,
            "messages": messages,
            "stream": False,
            "options": options,
        }
        if thinking_off:
            # Only false is sent: Ollama refuses think=true for a model that cannot think, and
            # leaving it out lets a thinking model think, as it does by default.
            body["think"] = False
        try:
            response = await self._client.post("/api/chat", json=body)
        except httpx2.TimeoutException:
            raise LLMError(f"no answer within {settings.timeout_seconds:g}s") from None
        except httpx2.TransportError as exc:
            raise LLMError(f"connection failed: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            detail = f"HTTP {response.status_code}: {_short(_ollama_error(response))}"
            if response.status_code in RETRY_LATER_STATUSES:
                raise RetryLater(detail, retry_after_seconds(response.headers))
            raise LLMError(detail)
        try:
            data = response.json()
            reply = data.get("message") or {}
            content, thinking = reply.get("content"), reply.get("thinking")
            done_reason = data.get("done_reason")
        except (ValueError, AttributeError):
            raise LLMError(f"not a chat answer: {_short(response.text)}") from None
        return completion(
            content if isinstance(content, str) else None,
            thinking if isinstance(thinking, str) else None,
            done_reason if isinstance(done_reason, str) else None,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _openai_error(exc: openai.APIStatusError) -> str:
    # The server's own words: the client's message repeats the status code around them.
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body:
        return body
    return exc.message


def _ollama_error(response: httpx2.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else response.text or response.reason_phrase
