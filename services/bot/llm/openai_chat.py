"""The OpenAI-compatible backend: any chat-completions server (vLLM, llama.cpp's server,
Ollama's /v1, hosted APIs), through the maintained `openai` client."""

from __future__ import annotations

from typing import Any, cast

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from ackbot.bot.llm.chat import SDK_MAX_RETRIES, ChatResponder, Completion, completion
from ackbot.bot.llm.failures import (
    NOT_FOUND_STATUS,
    LLMError,
    safe_url,
    short,
    status_failure,
    transport_failure,
)
from ackbot.bot.llm.settings import ChatSettings
from ackbot.bot.responder import Blame, IncomingMessage

# Given to the openai client when no key is configured, which insists on one; it is never sent
# (the Authorization header is omitted from every request), so a server that needs no key sees
# none. A user who wants a placeholder sent sets it as the key.
NO_API_KEY = "no-key"


class OpenAIChatResponder(ChatResponder):
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
            detail = f"HTTP {exc.status_code} from {url}: {short(_openai_error(exc))}"
            raise status_failure(exc.status_code, detail, url, exc.response.headers) from None
        except openai.APIError as exc:
            raise LLMError(f"unusable model list from {url}: {short(str(exc))}") from None
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
            detail = f"HTTP {exc.status_code} from {url}: {short(_openai_error(exc))}"
            raise status_failure(exc.status_code, detail, url, exc.response.headers) from None
        except openai.APIError as exc:
            raise LLMError(f"unusable answer from {self._chat_url}: {short(str(exc))}") from None
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
