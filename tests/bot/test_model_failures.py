"""Whose failure each answer of the model server is (issue 18), against the real fake server
(ackbot.testing.fake_llm) on both APIs: a refused key, an unknown model, no server, a complaint
about the request; the cheap probe of each backend; the conventional variables; no placeholder
key; the token usage; and the fake server's own failure modes."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx2
import pytest

from ackbot.bot.config import API_KEY_ENV, BotConfig
from ackbot.bot.llm import (
    DEFAULT_OLLAMA_URL,
    DEFAULT_OPENAI_URL,
    LLMError,
    OllamaChatResponder,
    OpenAIChatResponder,
    chat_settings,
    conventional_url,
)
from ackbot.bot.responder import Blame, DependencyDown, IncomingMessage, blame
from ackbot.testing import wait_until
from ackbot.testing.fake_llm import DOWN_CUT, FakeLLM, Status

BACKENDS = ["openai", "ollama"]
KEY = "sk-fake-123"


def incoming(text: str = "hello", message_id: str = "m-1") -> IncomingMessage:
    return IncomingMessage(id=message_id, author="alice", text=text, attempt=1)


@pytest.fixture
async def make():
    made = []

    async def build(llm: FakeLLM, backend: str, env: dict[str, str] | None = None, **options):
        settings = {
            "backend": backend,
            "llm_url": llm.openai_url if backend == "openai" else llm.url,
            "llm_model": "tiny-1",
            "llm_timeout_seconds": 5.0,
            **options,
        }
        config = BotConfig(**settings)
        chat = chat_settings(config, env or {})
        kind = OpenAIChatResponder if backend == "openai" else OllamaChatResponder
        responder = kind(chat)
        made.append(responder)
        return responder

    yield build
    for responder in made:
        await responder.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_refused_key_is_the_models_failure(make, backend):
    with FakeLLM(api_key=KEY) as llm:
        responder = await make(llm, backend, env={API_KEY_ENV: "wrong"})
        with pytest.raises(DependencyDown, match=f"HTTP 401 from {llm.url}/") as caught:
            await responder.reply(incoming())
        assert caught.value.cause == "auth"
        with pytest.raises(DependencyDown, match="HTTP 401") as probed:
            await responder.probe()
        assert probed.value.cause == "auth"
        right = await make(llm, backend, env={API_KEY_ENV: KEY})
        await right.probe()
        assert await right.reply(incoming()) == "An answer to: hello"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_forbidden_is_the_models_failure(make, backend):
    with FakeLLM() as llm:
        llm.script("x", Status(403, message="not for you"))
        responder = await make(llm, backend)
        with pytest.raises(DependencyDown, match="HTTP 403") as caught:
            await responder.reply(incoming("x"))
        assert caught.value.cause == "auth"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_unknown_model_is_the_models_failure(make, backend):
    with FakeLLM(models=["other:1b", "more"]) as llm:
        responder = await make(llm, backend)
        with pytest.raises(DependencyDown, match="HTTP 404") as caught:
            await responder.reply(incoming())
        assert caught.value.cause == "model_missing"
        with pytest.raises(
            DependencyDown, match=r"has no model 'tiny-1' \(it lists: other:1b, more\)"
        ):
            await responder.probe()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_probe_passes_when_the_model_is_listed(make, backend):
    with FakeLLM(models=["tiny-1"]) as llm:
        responder = await make(llm, backend)
        await responder.probe()
        assert llm.requests == []
        paths = [request.path for request in llm.probes]
        assert paths == ["/v1/models" if backend == "openai" else "/api/tags"]


async def test_ollama_names_a_model_without_tag_as_latest(make):
    with FakeLLM(models=["qwen3:latest"]) as llm:
        responder = await make(llm, "ollama", llm_model="qwen3")
        await responder.probe()


async def test_a_server_without_a_model_list_passes_the_openai_probe(make):
    with FakeLLM() as llm:  # lists no models: 404 for /v1/models, as some servers answer
        await (await make(llm, "openai")).probe()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_server_fails_the_probe_naming_the_url(make, backend):
    with FakeLLM() as llm:
        llm.down()
        responder = await make(llm, backend)
        with pytest.raises(DependencyDown, match=f"cannot connect to {llm.url}/") as caught:
            await responder.probe()
        assert caught.value.cause == "connect"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code", [400, 413, 422])
async def test_a_complaint_about_the_request_is_the_messages(make, backend, code):
    with FakeLLM() as llm:
        llm.script("long", Status(code, message="context too long"))
        responder = await make(llm, backend)
        with pytest.raises(LLMError, match=f"HTTP {code} from {llm.url}/") as caught:
            await responder.reply(incoming("long"))
        assert blame(caught.value) is Blame.MESSAGE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code", [500, 502, 504, 408])
async def test_a_server_error_is_suspect(make, backend, code):
    with FakeLLM() as llm:
        llm.script("boom", Status(code))
        responder = await make(llm, backend)
        with pytest.raises(LLMError) as caught:
            await responder.reply(incoming("boom"))
        assert blame(caught.value) is Blame.SUSPECT


async def test_without_a_key_openai_sends_no_authorization(make):
    with FakeLLM(models=["tiny-1"]) as llm:
        responder = await make(llm, "openai")
        await responder.probe()
        await responder.reply(incoming())
        seen = [*llm.probes, *llm.requests]
        assert len(seen) == 2
        assert [r for r in seen if "authorization" in r.headers] == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_usage_is_reported(make, backend):
    with FakeLLM() as llm:
        responder = await make(llm, backend)
        counted: list[tuple[int, int]] = []
        responder.on_usage = lambda prompt, done: counted.append((prompt, done))
        await responder.reply(incoming("one two"))
        # "An answer to: one two": five words, counted as five tokens by the fake server.
        assert counted == [(1, 5)]


# -- conventions -------------------------------------------------------------------------------


def test_openai_reads_openai_base_url_and_key_when_ackbots_are_unset():
    config = BotConfig(backend="openai", llm_model="m")
    env = {"OPENAI_BASE_URL": "http://h:1/v1/", "OPENAI_API_KEY": "sk-1"}
    settings = chat_settings(config, env)
    assert settings.url == "http://h:1/v1"
    assert settings.api_key == "sk-1"
    # ackbot's own win.
    mine = chat_settings(
        BotConfig(backend="openai", llm_model="m", llm_url="http://mine:2/v1"),
        {**env, API_KEY_ENV: "sk-mine"},
    )
    assert mine.url == "http://mine:2/v1"
    assert mine.api_key == "sk-mine"
    assert chat_settings(config, {}).url == DEFAULT_OPENAI_URL


def test_ollama_ignores_the_openai_key():
    settings = chat_settings(BotConfig(backend="ollama", llm_model="m"), {"OPENAI_API_KEY": "k"})
    assert settings.api_key == ""


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("", DEFAULT_OLLAMA_URL),
        ("gpu-box", "http://gpu-box:11434"),
        ("0.0.0.0:9999", "http://0.0.0.0:9999"),
        ("https://ollama.example.com", "https://ollama.example.com:11434"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("::1", "http://[::1]:11434"),
    ],
)
def test_ollama_host_is_read_as_ollama_reads_it(host, url):
    env = {"OLLAMA_HOST": host} if host else {}
    assert conventional_url("ollama", env) == url


def test_ollama_host_is_ignored_when_the_flag_is_set():
    settings = chat_settings(
        BotConfig(backend="ollama", llm_model="m", llm_url="http://mine:1"),
        {"OLLAMA_HOST": "other:2"},
    )
    assert settings.url == "http://mine:1"


# -- the fake server's failure modes -----------------------------------------------------------


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_fake_down_refuses_then_comes_back_on_the_same_port():
    with FakeLLM() as llm:
        port = llm.port
        llm.down()
        assert not _connects(port)
        llm.up()
        assert llm.port == port
        assert _connects(port)


async def test_fake_down_cut_accepts_and_closes():
    with FakeLLM() as llm:
        llm.down(DOWN_CUT)
        async with httpx2.AsyncClient() as client:
            with pytest.raises(httpx2.TransportError):
                await client.get(f"{llm.url}/api/tags")
        llm.up()


async def test_fake_flaps_on_its_schedule():
    with FakeLLM() as llm:
        llm.flap(0.3, 0.3)
        await wait_until(lambda: not _connects(llm.port), within=5)
        await wait_until(lambda: _connects(llm.port), within=5)
        llm.stop_flapping()
        assert _connects(llm.port)


def test_fake_runs_by_itself():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "ackbot.testing.fake_llm", "--port", str(port), "--model", "m1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line
        answer = httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert [model["id"] for model in answer["data"]] == ["m1"]
    finally:
        process.terminate()
        assert process.wait(10) == 0
        if process.stdout is not None:
            process.stdout.close()
