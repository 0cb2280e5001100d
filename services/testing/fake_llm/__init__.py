"""A scripted chat-model server for tests and benchmarks: real HTTP on a loopback port, in a thread
of the caller's process, speaking both APIs the bot's LLM backends use (non-streaming):

- OpenAI's `POST /v1/chat/completions` (what vLLM, llama.cpp's server and Ollama's /v1 serve),
- Ollama's native `POST /api/chat`.

and the model lists of both: `GET /v1/models` and `GET /api/tags`.

It is wire-faithful, not a model: each request gets the next `Action` of the script whose text
it matches (a normal reply, empty content, thinking only, 429 or 503 with or without Retry-After,
500, a stall, a cut connection, a reply cut by the token limit, a reply held until the test
opens a gate), and every request is recorded, so a test can count how often the bot asked about
a message, and check what it sent.

A whole server can fail too: `down()` refuses connections (the port is closed) or cuts each one
(`down(DOWN_CUT)`), `up()` ends that, `flap(up_seconds, down_seconds)` alternates on a schedule;
`api_key=` makes it answer 401 to any other key, `models=` makes it list those models and answer
404 for any other, as real servers do.

    with FakeLLM() as llm:
        llm.script("poison", Status(500))
        ...  # a bot started with --llm-url llm.openai_url (or llm.url for --backend ollama)
        assert len(llm.requests_for("poison")) == 2

Run by itself (README, "Trying it without a model"): `python -m ackbot.testing.fake_llm --port
8089` answers every message with "An answer to: <text>"; see --help for the failure modes.

Its modules: `script` (the actions and the request record), `server` (FakeLLM: life cycle,
whole-server failures, scripting), `wire` (the HTTP routes and bodies of both APIs), `__main__`
(the command). The names the tests use are importable from here.
"""

from ackbot.testing.fake_llm.script import (
    OLLAMA_PATH,
    OLLAMA_TAGS_PATH,
    OPENAI_MODELS_PATH,
    OPENAI_PATH,
    Action,
    Cut,
    Hold,
    Reply,
    SeenRequest,
    Stall,
    Status,
    Thinks,
    answer_to,
)
from ackbot.testing.fake_llm.server import DOWN_CUT, DOWN_MODES, DOWN_REFUSE, FakeLLM

__all__ = [
    "DOWN_CUT",
    "DOWN_MODES",
    "DOWN_REFUSE",
    "OLLAMA_PATH",
    "OLLAMA_TAGS_PATH",
    "OPENAI_MODELS_PATH",
    "OPENAI_PATH",
    "Action",
    "Cut",
    "FakeLLM",
    "Hold",
    "Reply",
    "SeenRequest",
    "Stall",
    "Status",
    "Thinks",
    "answer_to",
]
