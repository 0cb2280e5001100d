"""The LLM backends against a real HTTP server (ackbot.testing.fake_llm) speaking both APIs: what
each sends (model, system prompt with the persona, the message as the user's turn, token limit,
temperature, the API key), and how each answer or failure comes back: text, a cut reply, an empty
completion asked again with thinking off, RetryLater for 429/503, LLMError for the rest."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ackbot.bot.config import API_KEY_ENV, BotConfig
from ackbot.bot.llm import (
    CUT_MARKER,
    BackendConfigError,
    LLMError,
    OllamaChatResponder,
    OpenAIChatResponder,
    chat_settings,
    retry_after_seconds,
    safe_url,
    split_thinking,
)
from ackbot.bot.responder import (
    Blame,
    DependencyDown,
    EmptyCompletion,
    IncomingMessage,
    RetryLater,
    Turn,
    blame,
    close_responder,
    create_responder,
)
from ackbot.testing.fake_llm import Cut, Reply, Stall, Status, Thinks, answer_to

SECRET = "sk-test-0123456789abcdef"
BACKENDS = ["openai", "ollama"]


def config_for(fake_llm, backend: str, **options) -> BotConfig:
    settings = {
        "persona": "Ava",
        "backend": backend,
        "llm_url": fake_llm.openai_url if backend == "openai" else fake_llm.url,
        "llm_model": "tiny-1",
        "llm_timeout_seconds": 10.0,
        **options,
    }
    return BotConfig(**settings)


def incoming(text: str = "What is ackbot?", message_id: str = "m-1") -> IncomingMessage:
    return IncomingMessage(id=message_id, author="alice", text=text, attempt=1)


@pytest.fixture
async def make(fake_llm):
    """make(backend, **BotConfig fields) -> the backend's responder, closed at teardown."""
    made = []

    async def build(backend: str, env: dict[str, str] | None = None, **options):
        config = config_for(fake_llm, backend, **options)
        settings = chat_settings(config, env or {})
        responder = (
            OpenAIChatResponder(settings) if backend == "openai" else OllamaChatResponder(settings)
        )
        made.append(responder)
        return responder

    yield build
    for responder in made:
        await responder.aclose()


async def test_openai_request_shape(make, fake_llm, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    responder = await make(
        "openai", llm_api_key_file=str(key_file), llm_max_tokens=77, llm_temperature=0.3
    )
    assert await responder.reply(incoming("Hello there")) == answer_to("Hello there")
    [request] = fake_llm.requests
    assert request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"] == "tiny-1"
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.3
    assert body.get("stream") in (None, False)
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "Ava" in system["content"]
    assert user == {"role": "user", "content": "Hello there"}
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert not request.thinking_off, "the first request lets the model think as it does"


async def test_ollama_request_shape(make, fake_llm):
    responder = await make(
        "ollama", env={API_KEY_ENV: SECRET}, llm_max_tokens=55, llm_temperature=1.5
    )
    assert await responder.reply(incoming("Hello there")) == answer_to("Hello there")
    [request] = fake_llm.requests
    assert request.path == "/api/chat"
    body = request.body
    assert body["model"] == "tiny-1"
    assert body["stream"] is False
    assert body["options"] == {"num_predict": 55, "temperature": 1.5}
    assert "think" not in body
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "Ava" in system["content"]
    assert user == {"role": "user", "content": "Hello there"}
    assert request.headers["authorization"] == f"Bearer {SECRET}"


async def test_without_a_key_ollama_sends_no_authorization(make, fake_llm):
    responder = await make("ollama")
    await responder.reply(incoming())
    assert "authorization" not in fake_llm.requests[0].headers


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_system_prompt_names_the_persona(make, fake_llm, backend, tmp_path):
    responder = await make(backend, system_prompt="I am {persona}. {Braces} stay.")
    await responder.reply(incoming())
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("From a file, as {persona}.\n")
    from_file = await make(backend, system_prompt_file=str(prompt_file))
    await from_file.reply(incoming())
    prompts = [request.body["messages"][0]["content"] for request in fake_llm.requests]
    assert prompts == ["I am Ava. {Braces} stay.", "From a file, as Ava."]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_thinking_off_from_the_start(make, fake_llm, backend):
    responder = await make(backend, llm_thinking="off")
    await responder.reply(incoming())
    [request] = fake_llm.requests
    assert request.thinking_off


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_thinking_only_answer_is_asked_again_with_thinking_off(make, fake_llm, backend):
    fake_llm.script("ponder", Thinks(then=Reply("Forty-two.")))
    responder = await make(backend)
    assert await responder.reply(incoming("ponder this")) == "Forty-two."
    first, second = fake_llm.requests
    assert not first.thinking_off
    assert second.thinking_off
    if backend == "openai":
        assert second.body["reasoning_effort"] == "none"
    else:
        assert second.body["think"] is False


async def test_the_openai_thinking_off_fields_are_configurable(make, fake_llm):
    fake_llm.script("ponder", Thinks(then=Reply("ok")))
    responder = await make(
        "openai", llm_no_think_params='{"chat_template_kwargs": {"enable_thinking": false}}'
    )
    assert await responder.reply(incoming("ponder")) == "ok"
    retry = fake_llm.requests[1].body
    assert retry["chat_template_kwargs"] == {"enable_thinking": False}
    assert "reasoning_effort" not in retry


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_answer_that_stays_empty_is_an_empty_completion(make, fake_llm, backend):
    fake_llm.script("void", Reply("", finish_reason="length", reasoning="x" * 120))
    responder = await make(backend)
    with pytest.raises(EmptyCompletion) as caught:
        await responder.reply(incoming("void"))
    assert caught.value.detail == (
        "no text (finish_reason=length, 120 characters of reasoning), "
        "nor with thinking off (finish_reason=length, 120 characters of reasoning)"
    )
    assert [request.thinking_off for request in fake_llm.requests] == [False, True]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_whitespace_and_inline_thinking_count_as_empty(make, fake_llm, backend):
    fake_llm.script("blank", Reply("  \n "), Reply("<think>hmm, what to say</think>\n"))
    responder = await make(backend)
    with pytest.raises(EmptyCompletion, match=r"thinking off \(finish_reason=stop, 16 characters"):
        await responder.reply(incoming("blank"))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_reply_cut_by_the_token_limit_is_kept_and_marked(make, fake_llm, backend):
    fake_llm.script("long", Reply("The first part of a long ", finish_reason="length"))
    responder = await make(backend)
    assert await responder.reply(incoming("long")) == "The first part of a long" + CUT_MARKER
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code", [429, 503])
async def test_busy_with_retry_after_is_retry_later_with_the_delay(make, fake_llm, backend, code):
    # Past the openai client's own ceiling (120 s), so it hands the answer over at once.
    fake_llm.script("busy", Status(code, retry_after="600"))
    responder = await make(backend)
    with pytest.raises(RetryLater) as caught:
        await responder.reply(incoming("busy"))
    assert caught.value.delay_seconds == 600.0
    assert caught.value.detail.startswith(f"HTTP {code} from {fake_llm.url}/")
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("code", [429, 503])
async def test_busy_without_retry_after_is_retry_later_without_a_delay(
    make, fake_llm, backend, code
):
    fake_llm.script("busy", Status(code))
    responder = await make(backend)
    with pytest.raises(RetryLater) as caught:
        await responder.reply(incoming("busy"))
    assert caught.value.delay_seconds is None
    # The openai client retries once by itself; the native client does not.
    assert len(fake_llm.requests) == (2 if backend == "openai" else 1)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_server_error_is_a_suspect_failure_naming_the_url(make, fake_llm, backend):
    fake_llm.script("boom", Status(500, message="kaput"))
    responder = await make(backend)
    with pytest.raises(LLMError, match=rf"HTTP 500 from {fake_llm.url}/\S+: kaput") as caught:
        await responder.reply(incoming("boom"))
    assert blame(caught.value) is Blame.SUSPECT


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_stall_past_the_timeout_is_a_suspect_failure(make, fake_llm, backend):
    fake_llm.script("slow", Stall(30))
    responder = await make(backend, llm_timeout_seconds=0.5)
    began = time.monotonic()
    with pytest.raises(
        LLMError, match=rf"no answer from {fake_llm.url}/\S+ within 0\.5s"
    ) as caught:
        await responder.reply(incoming("slow"))
    assert blame(caught.value) is Blame.SUSPECT
    assert time.monotonic() - began < 20, "the timeout cut the stall short"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cut_connection_is_a_suspect_failure(make, fake_llm, backend):
    # Cut after the request was sent: the server may have died of this very message.
    fake_llm.script("cut", Cut())
    responder = await make(backend)
    with pytest.raises(LLMError, match=f"connection to {fake_llm.url}/\\S+ failed") as caught:
        await responder.reply(incoming("cut"))
    assert blame(caught.value) is Blame.SUSPECT


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_unreachable_server_is_the_models_failure(make, backend):
    responder = await make(backend, llm_url="http://127.0.0.1:9/v1")
    pattern = re.escape("cannot connect to http://127.0.0.1:9/v1/")
    with pytest.raises(DependencyDown, match=pattern) as caught:
        await responder.reply(incoming())
    assert caught.value.cause == "connect"
    assert blame(caught.value) is Blame.DEPENDENCY


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_api_key_is_never_logged(make, fake_llm, backend, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    fake_llm.script("fail", Status(500))
    responder = await make(backend, llm_api_key_file=str(key_file), log_level="DEBUG")
    await responder.reply(incoming("fine"))
    with pytest.raises(LLMError) as caught:
        await responder.reply(incoming("fail"))
    assert fake_llm.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert caplog.records, "DEBUG logging was on"
    assert SECRET not in caplog.text
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(chat_settings(config_for(fake_llm, backend), {API_KEY_ENV: SECRET}))


async def test_create_responder_picks_the_backend(fake_llm):
    for backend, kind in [("openai", OpenAIChatResponder), ("ollama", OllamaChatResponder)]:
        responder = await create_responder(config_for(fake_llm, backend))
        try:
            assert isinstance(responder, kind)
            assert await responder.reply(incoming("hi")) == answer_to("hi")
        finally:
            await close_responder(responder)


def test_settings_defaults(fake_llm):
    config = BotConfig(backend="ollama", llm_model="m")
    settings = chat_settings(config, {})
    assert settings.url == "http://127.0.0.1:11434"
    assert settings.api_key == ""
    assert "ackbot" in settings.system_prompt
    assert not settings.thinking_off
    openai_settings = chat_settings(replace(config, backend="openai"), {API_KEY_ENV: " k \n"})
    assert openai_settings.url == "https://api.openai.com/v1"
    assert openai_settings.api_key == "k"
    assert openai_settings.no_think_params == {"reasoning_effort": "none"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"llm_model": ""}, "needs --llm-model"),
        ({"responder": "pkg.mod:make"}, "--responder and --backend openai exclude each other"),
        ({"system_prompt": "a", "system_prompt_file": "/x"}, "exclude each other"),
        ({"llm_api_key_file": "/no/such/key"}, "cannot read --llm-api-key-file /no/such/key"),
        ({"system_prompt_file": "/no/such/prompt"}, "cannot read --system-prompt-file"),
        ({"llm_url": "ftp://user:pw@host/x?token=1"}, "'ftp://host/x'"),
    ],
)
def test_settings_that_cannot_work_are_refused(options, message):
    config = BotConfig(**{"backend": "openai", "llm_model": "m", **options})
    with pytest.raises(BackendConfigError, match=message.replace("?", r"\?")):
        chat_settings(config, {})


def test_safe_url_drops_credentials_and_query():
    assert (
        safe_url("https://u:p@api.example.com:8443/v1?key=s") == "https://api.example.com:8443/v1"
    )


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds({"retry-after": later}) or 0) <= 31


def test_split_thinking():
    assert split_thinking("  plain  ") == ("plain", "")
    assert split_thinking("<think>why</think> answer") == ("answer", "why")
    assert split_thinking("<think>never closed") == ("", "never closed")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_conversation_goes_before_the_message_own_replies_as_the_assistant(
    make, fake_llm, backend
):
    responder = await make(backend, llm_context_turns=4, llm_context_chars=100)
    assert (responder.context_turns, responder.context_chars) == (4, 100)
    message = replace(
        incoming("and the third?"),
        conversation_id="thread-1",
        context=(
            Turn("alice", "first question"),
            Turn("Ava", "first answer", mine=True),
            Turn("bob", "second question"),
        ),
    )

    await responder.reply(message)

    [request] = fake_llm.requests
    assert [(m["role"], m["content"]) for m in request.body["messages"][1:]] == [
        ("user", "alice: first question"),
        ("assistant", "first answer"),
        ("user", "bob: second question"),
        ("user", "alice: and the third?"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_message_without_a_conversation_goes_alone_as_before(make, fake_llm, backend):
    responder = await make(backend)
    await responder.reply(incoming("hello"))
    [request] = fake_llm.requests
    assert [(m["role"], m["content"]) for m in request.body["messages"][1:]] == [("user", "hello")]
