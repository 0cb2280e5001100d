"""LLM backends: replies from a chat model, behind the Responder interface.

Two wire protocols, one behaviour:

- `OpenAIChatResponder`: any OpenAI-compatible chat-completions server (vLLM, llama.cpp's
  server, Ollama's /v1, hosted APIs), through the maintained `openai` client.
- `OllamaChatResponder`: Ollama's native `POST /api/chat`, through `httpx2` (the HTTP client the
  `openai` package is built on), because Ollama's own client drops the response headers, and
  with them Retry-After.

What goes wrong is classified here, and what each class means for the message is decided in
ackbot.bot.delivery (the Responder docstring has the list):

- No connection (refused, DNS, TLS, connect timeout), HTTP 401 or 403 (the key), HTTP 404 (no
  such model, or no such API at that URL): `DependencyDown`, the model's failure (no attempt
  spent; the bot's breaker opens, ackbot.bot.breaker).
- HTTP 429 or 503, with or without Retry-After: `RetryLater` (the attempt is given back).
- A timeout, a connection cut after the request was sent, any other 5xx: `LLMError` with blame
  SUSPECT: the message's, unless such failures hit several different messages in a row.
- Any other 4xx (too long a context, content refused): `LLMError` with blame MESSAGE.
- An empty completion (no text, or only thinking): asked once more with thinking off, then
  `EmptyCompletion`, whose detail names the finish reason and how much reasoning came back.
- A reply cut by the token limit (finish reason "length"): kept, ending with CUT_MARKER.

Every error names the URL it came from (`safe_url`: no credentials).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from ackbot.bot.config import API_KEY_ENV, BotConfig
from ackbot.bot.responder import (
    Blame,
    DependencyDown,
    EmptyCompletion,
    IncomingMessage,
    Responder,
    RetryLater,
)

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
# Given to the openai client when no key is configured, which insists on one; it is never sent
# (the Authorization header is omitted from every request), so a server that needs no key sees
# none. A user who wants a placeholder sent sets it as the key.
NO_API_KEY = "no-key"
# The conventional variables of each backend, read when ackbot's own flag and variable are unset.
OPENAI_KEY_ENV = "OPENAI_API_KEY"
OPENAI_URL_ENV = "OPENAI_BASE_URL"
OLLAMA_HOST_ENV = "OLLAMA_HOST"
OLLAMA_DEFAULT_PORT = 11434
# Statuses that say the model server refuses the bot itself, whatever the message: the key
# (401, 403), or no such model or API at that URL (404).
AUTH_STATUSES = frozenset({401, 403})
NOT_FOUND_STATUS = 404
# 408 (the server's own request timeout) is a timeout, not a complaint about the request.
REQUEST_TIMEOUT_STATUS = 408
# Cause labels of DependencyDown (logs, ackbot_bot_model_breaker_transitions_total{cause}).
CAUSE_CONNECT = "connect"
CAUSE_AUTH = "auth"
CAUSE_MODEL_MISSING = "model_missing"
CAUSE_ERRORS = "errors"
# How much of an error body goes into a last_error (the store keeps 1024 characters in all).
MAX_ERROR_BODY_CHARS = 300
# Statuses that mean "busy, come back later": rate limited, or overloaded (Ollama answers 503
# when its queue, OLLAMA_MAX_QUEUE, is full).
RETRY_LATER_STATUSES = frozenset({429, 503})
OLLAMA_CHAT_PATH = "/api/chat"
OLLAMA_TAGS_PATH = "/api/tags"
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


class LLMError(Exception):
    """A request to the model server failed with a timeout, a cut connection or an HTTP error
    status that does not say the server is down. `blame` says whose failure it is: SUSPECT for
    a timeout, a cut or a 5xx (the breaker decides), MESSAGE for a 4xx about this request."""

    def __init__(self, detail: str, blame: Blame = Blame.MESSAGE) -> None:
        super().__init__(detail)
        self.blame = blame


def status_failure(status: int, detail: str, url: str, headers: Mapping[str, str]) -> Exception:
    """The exception for an HTTP error `status` from the model server at `url`: the table of
    the module docstring."""
    if status in RETRY_LATER_STATUSES:
        return RetryLater(detail, retry_after_seconds(headers))
    if status in AUTH_STATUSES:
        return DependencyDown(f"{detail} (check the API key)", cause=CAUSE_AUTH, target=url)
    if status == NOT_FOUND_STATUS:
        return DependencyDown(
            f"{detail} (no such model, or no such API at this URL)",
            cause=CAUSE_MODEL_MISSING,
            target=url,
        )
    if status >= 500 or status == REQUEST_TIMEOUT_STATUS:
        return LLMError(detail, Blame.SUSPECT)
    return LLMError(detail, Blame.MESSAGE)


def transport_failure(exc: BaseException, url: str, timeout_seconds: float) -> Exception:
    """The exception for a request to `url` that got no HTTP answer: `exc` is httpx2's."""
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        # The request never left: nothing about the message can have caused it.
        return DependencyDown(
            f"cannot connect to {url}: {type(exc).__name__}: {exc}", cause=CAUSE_CONNECT, target=url
        )
    if isinstance(exc, httpx2.TimeoutException):
        return LLMError(f"no answer from {url} within {timeout_seconds:g}s", Blame.SUSPECT)
    # Cut after the request was sent: the server may have died of this very message, so it is
    # the model's only when it hits several different messages in a row.
    return LLMError(f"connection to {url} failed: {type(exc).__name__}: {exc}", Blame.SUSPECT)


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
    url = (config.llm_url or conventional_url(config.backend, env)).rstrip("/")
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
    if not api_key.strip() and config.backend == "openai":
        api_key = env.get(OPENAI_KEY_ENV, "")
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


def conventional_url(backend: str, env: Mapping[str, str]) -> str:
    """The model server's URL when --llm-url is unset: OPENAI_BASE_URL for openai, OLLAMA_HOST
    (HOST, HOST:PORT or a URL, as Ollama reads it) for ollama, else the default."""
    if backend == "openai":
        return env.get(OPENAI_URL_ENV, "").strip() or DEFAULT_OPENAI_URL
    host = env.get(OLLAMA_HOST_ENV, "").strip()
    if not host:
        return DEFAULT_OLLAMA_URL
    if "://" not in host:
        if host.count(":") > 1 and not host.startswith("["):
            host = f"[{host}]"  # a bare IPv6 address
        host = f"http://{host}"
    parts = urlsplit(host)
    if parts.port is None and parts.hostname:
        netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        host = urlunsplit((parts.scheme, f"{netloc}:{OLLAMA_DEFAULT_PORT}", parts.path, "", ""))
    return host


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        # The error names the file, never its content (it may be a key).
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise BackendConfigError(f"cannot read {flag} {path}: {reason}") from None


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
        # Without a key, no Authorization header at all (the client would send its placeholder).
        self._headers: dict[str, Any] = {} if settings.api_key else {"Authorization": openai.omit}
        self._chat_url = safe_url(f"{settings.url}/chat/completions")
        self._models_url = safe_url(f"{settings.url}/models")

    async def probe(self) -> None:
        url = self._models_url
        try:
            page = await self._client.models.list(
                extra_headers=self._headers, timeout=min(self._settings.timeout_seconds, 10.0)
            )
        except openai.APIConnectionError as exc:
            raise _openai_transport_failure(exc, url, self._settings.timeout_seconds) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (NOT_FOUND_STATUS, 405):
                return  # a server without a model list: reachable, and that is all it can say
            detail = f"HTTP {exc.status_code} from {url}: {_short(_openai_error(exc))}"
            raise status_failure(exc.status_code, detail, url, exc.response.headers) from None
        except openai.APIError as exc:
            raise LLMError(f"unusable model list from {url}: {_short(str(exc))}") from None
        names = [model.id for model in page.data]
        self._check_listed(names, url, empty_means_missing=False)

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
                extra_headers=self._headers,
                stream=False,
            )
        except openai.APIConnectionError as exc:
            url = self._chat_url
            raise _openai_transport_failure(exc, url, settings.timeout_seconds) from None
        except openai.APIStatusError as exc:
            url = self._chat_url
            detail = f"HTTP {exc.status_code} from {url}: {_short(_openai_error(exc))}"
            raise status_failure(exc.status_code, detail, url, exc.response.headers) from None
        except openai.APIError as exc:
            raise LLMError(f"unusable answer from {self._chat_url}: {_short(str(exc))}") from None
        if response.usage is not None:
            self._count(response.usage.prompt_tokens, response.usage.completion_tokens)
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
        self._chat_url = safe_url(f"{settings.url}{OLLAMA_CHAT_PATH}")
        self._tags_url = safe_url(f"{settings.url}{OLLAMA_TAGS_PATH}")

    async def probe(self) -> None:
        url = self._tags_url
        try:
            response = await self._client.get(
                OLLAMA_TAGS_PATH, timeout=min(self._settings.timeout_seconds, 10.0)
            )
        except httpx2.TransportError as exc:
            raise transport_failure(exc, url, self._settings.timeout_seconds) from None
        if response.status_code in (NOT_FOUND_STATUS, 405):
            return  # no model list at this URL: reachable, and the first answer will say more
        if response.status_code >= 400:
            detail = f"HTTP {response.status_code} from {url}: {_short(_ollama_error(response))}"
            raise status_failure(response.status_code, detail, url, response.headers)
        try:
            models = response.json().get("models") or []
            names = [str(model.get("name") or model.get("model")) for model in models]
        except (ValueError, AttributeError):
            raise LLMError(f"not a model list from {url}: {_short(response.text)}") from None
        # Ollama answers only with the models it has pulled: an empty list means "not pulled".
        self._check_listed(names, url, empty_means_missing=True)

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
            response = await self._client.post(OLLAMA_CHAT_PATH, json=body)
        except httpx2.TransportError as exc:
            raise transport_failure(exc, self._chat_url, settings.timeout_seconds) from None
        if response.status_code >= 400:
            url = self._chat_url
            detail = f"HTTP {response.status_code} from {url}: {_short(_ollama_error(response))}"
            raise status_failure(response.status_code, detail, url, response.headers)
        try:
            data = response.json()
            reply = data.get("message") or {}
            content, thinking = reply.get("content"), reply.get("thinking")
            done_reason = data.get("done_reason")
        except (ValueError, AttributeError):
            raise LLMError(
                f"not a chat answer from {self._chat_url}: {_short(response.text)}"
            ) from None
        self._count(data.get("prompt_eval_count"), data.get("eval_count"))
        return completion(
            content if isinstance(content, str) else None,
            thinking if isinstance(thinking, str) else None,
            done_reason if isinstance(done_reason, str) else None,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _openai_transport_failure(
    exc: openai.APIConnectionError, url: str, timeout_seconds: float
) -> Exception:
    cause = exc.__cause__
    if isinstance(cause, httpx2.TransportError):
        return transport_failure(cause, url, timeout_seconds)
    if isinstance(exc, openai.APITimeoutError):
        return LLMError(f"no answer from {url} within {timeout_seconds:g}s", Blame.SUSPECT)
    return LLMError(f"connection to {url} failed: {cause or exc}", Blame.SUSPECT)


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
