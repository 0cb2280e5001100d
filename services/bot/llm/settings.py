"""The LLM settings, resolved once from the bot's config and the backends' conventional
environment variables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ackbot.bot.config import API_KEY_ENV, BotConfig
from ackbot.bot.llm.failures import safe_url

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
DEFAULT_SYSTEM_PROMPT = (
    "You are {persona}, who answers the messages people post in a chat. Answer each message in "
    "a few friendly, helpful sentences."
)
# The conventional variables of each backend, read when ackbot's own flag and variable are unset.
OPENAI_KEY_ENV = "OPENAI_API_KEY"
OPENAI_URL_ENV = "OPENAI_BASE_URL"
OLLAMA_HOST_ENV = "OLLAMA_HOST"
OLLAMA_DEFAULT_PORT = 11434


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
