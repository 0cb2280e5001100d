"""The Ollama backend: Ollama's native `POST /api/chat`, through `httpx2` (the HTTP client the
`openai` package is built on), because Ollama's own client drops the response headers, and with
them Retry-After."""

from __future__ import annotations

from typing import Any

import httpx2

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
from ackbot.bot.responder import IncomingMessage

OLLAMA_CHAT_PATH = "/api/chat"
OLLAMA_TAGS_PATH = "/api/tags"


class OllamaChatResponder(ChatResponder):
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
            detail = f"HTTP {response.status_code} from {url}: {short(_ollama_error(response))}"
            raise status_failure(response.status_code, detail, url, response.headers)
        try:
            models = response.json().get("models") or []
            names = [str(model.get("name") or model.get("model")) for model in models]
        except (ValueError, AttributeError):
            raise LLMError(f"not a model list from {url}: {short(response.text)}") from None
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
            detail = f"HTTP {response.status_code} from {url}: {short(_ollama_error(response))}"
            raise status_failure(response.status_code, detail, url, response.headers)
        try:
            data = response.json()
            reply = data.get("message") or {}
            content, thinking = reply.get("content"), reply.get("thinking")
            done_reason = data.get("done_reason")
        except (ValueError, AttributeError):
            raise LLMError(
                f"not a chat answer from {self._chat_url}: {short(response.text)}"
            ) from None
        self._count(data.get("prompt_eval_count"), data.get("eval_count"))
        return completion(
            content if isinstance(content, str) else None,
            thinking if isinstance(thinking, str) else None,
            done_reason if isinstance(done_reason, str) else None,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _ollama_error(response: httpx2.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else response.text or response.reason_phrase
