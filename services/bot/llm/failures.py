"""What goes wrong with a model server, classified once for both wire protocols.

What each class means for the message is decided in ackbot.bot.policy (the Responder docstring
has the list):

- No connection (refused, DNS, TLS, connect timeout), HTTP 401 or 403 (the key), HTTP 404 (no
  such model, or no such API at that URL): `DependencyDown`, the model's failure (no attempt
  spent; the bot's breaker opens, ackbot.bot.breaker).
- HTTP 429 or 503, with or without Retry-After: `RetryLater` (the attempt is given back).
- A timeout, a connection cut after the request was sent, any other 5xx: `LLMError` with blame
  SUSPECT: the message's, unless such failures hit several different messages in a row.
- Any other 4xx (too long a context, content refused): `LLMError` with blame MESSAGE.

(The empty completion and the cut reply are the chat's own: ackbot.bot.llm.chat.)

Every error names the URL it came from (`safe_url`: no credentials).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import httpx2

from ackbot.bot.responder import Blame, DependencyDown, RetryLater

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
# How much of an error body goes into a last_error (the store keeps 1024 characters in all).
MAX_ERROR_BODY_CHARS = 300
# Statuses that mean "busy, come back later": rate limited, or overloaded (Ollama answers 503
# when its queue, OLLAMA_MAX_QUEUE, is full).
RETRY_LATER_STATUSES = frozenset({429, 503})


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


def safe_url(url: str) -> str:
    """The URL without user, password or query: what may appear in logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def short(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= MAX_ERROR_BODY_CHARS:
        return flat
    return flat[: MAX_ERROR_BODY_CHARS - 1] + "…"
