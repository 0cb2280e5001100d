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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

OPENAI_PATH = "/v1/chat/completions"
OLLAMA_PATH = "/api/chat"
OPENAI_MODELS_PATH = "/v1/models"
OLLAMA_TAGS_PATH = "/api/tags"
# How a server that is down fails: its port refuses connections, or it accepts and cuts each.
DOWN_REFUSE = "refuse"
DOWN_CUT = "cut"
DOWN_MODES = (DOWN_REFUSE, DOWN_CUT)
# How often a held or stalled request looks whether the server is stopping.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Reply:
    """A completion. `text` None answers with `answer_to(the user's text)`."""

    text: str | None = None
    finish_reason: str = "stop"
    # Sent in the thinking channel: `reasoning` (OpenAI-compatible) or `thinking` (Ollama).
    reasoning: str = ""


@dataclass(frozen=True)
class Thinks:
    """A thinking model that spends its whole budget thinking: only `reasoning` and empty
    content while thinking is on; `then` when the request turns thinking off (Ollama
    `think: false`; `reasoning_effort: "none"` or `chat_template_kwargs.enable_thinking: false`)."""

    reasoning: str = "Let me think about how to answer this."
    finish_reason: str = "length"
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Status:
    """An error status, with a Retry-After header when `retry_after` is set."""

    code: int
    retry_after: str | None = None
    message: str = "the fake model server says no"


@dataclass(frozen=True)
class Stall:
    """Waits `seconds` (past the client's timeout, typically), then answers `then`."""

    seconds: float
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Hold:
    """Waits until `gate` is set (or the server stops), then answers `then`."""

    gate: threading.Event
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True)
class Cut:
    """Closes the connection without an answer."""


Action = Reply | Thinks | Status | Stall | Hold | Cut


def answer_to(text: str) -> str:
    """The text of a default Reply."""
    return f"An answer to: {text}"


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it."""

    path: str
    body: dict[str, Any]
    # Header names in lower case.
    headers: dict[str, str]
    received_at: float

    @property
    def api(self) -> str:
        return "ollama" if self.path in (OLLAMA_PATH, OLLAMA_TAGS_PATH) else "openai"

    @property
    def user_text(self) -> str:
        """The content of the last user message."""
        messages = self.body.get("messages") or []
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    @property
    def thinking_off(self) -> bool:
        if self.api == "ollama":
            return self.body.get("think") is False
        template = self.body.get("chat_template_kwargs")
        return self.body.get("reasoning_effort") == "none" or (
            isinstance(template, dict) and template.get("enable_thinking") is False
        )


@dataclass
class _Rule:
    match: str
    actions: list[Action]
    then: Action | None
    used: int = 0

    def next(self) -> Action:
        if self.used < len(self.actions):
            action = self.actions[self.used]
            self.used += 1
            return action
        return self.then if self.then is not None else self.actions[-1]


class FakeLLM:
    """The server; `start()` it (or use `with`), point a bot at `openai_url` or `url`, script
    it, and read `requests` afterwards. Safe to script and read from any thread."""

    def __init__(
        self,
        *,
        default: Action | None = None,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._default: Action = default if default is not None else Reply()
        self._rules: list[_Rule] = []
        self._requests: list[SeenRequest] = []
        # The model-list requests (GET), kept apart: `requests` are the chat requests.
        self._probes: list[SeenRequest] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._flapper: threading.Thread | None = None
        self._stop_flapping = threading.Event()
        # Requests without `Authorization: Bearer <api_key>` get 401 (None: no key needed).
        self.api_key = api_key
        # The models it lists and answers for; None: it lists none (404 for both lists, like a
        # server without them) and answers for any model.
        self.models = tuple(models) if models is not None else None
        self._host = host
        self._port = port
        # DOWN_CUT while it cuts every connection; DOWN_REFUSE while its port is closed.
        self.down_mode: str | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._listen()
        return self

    def _listen(self) -> None:
        server = _Server((self._host, self._port), _Handler)
        server.llm = self
        # Down and up again, it listens on the same port, so the bot's URL stays right.
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _close(self) -> None:
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def stop(self) -> None:
        """Stops serving; held and stalled requests end, open connections are closed."""
        self.stopping.set()
        self._stop_flapping.set()
        if self._flapper is not None and self._flapper is not threading.current_thread():
            self._flapper.join(5)
        self._close()

    def down(self, mode: str = DOWN_REFUSE) -> None:
        """The server goes down: DOWN_REFUSE closes its port (open connections are cut, new
        ones refused); DOWN_CUT accepts connections and closes each without an answer."""
        if mode not in DOWN_MODES:
            raise ValueError(f"mode must be one of {DOWN_MODES}, got {mode!r}")
        with self._lock:
            self.down_mode = mode
        if mode == DOWN_REFUSE:
            self._close()
        elif self._server is not None:
            self._server.close_connections()

    def up(self) -> None:
        """Back up after `down()`, on the same port."""
        with self._lock:
            mode, self.down_mode = self.down_mode, None
        if mode == DOWN_REFUSE and self._server is None and not self.stopping.is_set():
            self._listen()

    def flap(self, up_seconds: float, down_seconds: float, *, mode: str = DOWN_REFUSE) -> None:
        """Up `up_seconds`, down `down_seconds`, again and again until `stop()` or
        `stop_flapping()` (which leaves it up)."""
        self._stop_flapping.clear()

        def run() -> None:
            while not self._stop_flapping.wait(up_seconds):
                self.down(mode)
                if self._stop_flapping.wait(down_seconds):
                    break
                self.up()
            if not self.stopping.is_set():
                self.up()

        self._flapper = threading.Thread(target=run, daemon=True, name="fake-llm-flap")
        self._flapper.start()

    def stop_flapping(self) -> None:
        self._stop_flapping.set()
        if self._flapper is not None:
            self._flapper.join(5)
        self._flapper = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port, "start() the server first"
        return self._port

    @property
    def url(self) -> str:
        """The base URL for --backend ollama."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """The base URL for --backend openai."""
        return f"{self.url}/v1"

    # -- scripting ----------------------------------------------------------------------------

    def script(self, match: str, *actions: Action, then: Action | None = None) -> None:
        """Requests whose user text contains `match` get `actions` in turn, then `then` (by
        default the last action, again and again). The first matching script wins; other
        requests get the default action."""
        if not actions:
            raise ValueError("script() needs at least one action")
        with self._lock:
            self._rules.append(_Rule(match, list(actions), then))

    def next_action(self, request: SeenRequest) -> Action:
        with self._lock:
            self._requests.append(request)
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            for rule in self._rules:
                if rule.match in request.user_text:
                    return rule.next()
            return self._default

    def _refusal(self, request: SeenRequest) -> Action | None:
        """What a server that refuses the request whatever its text answers: a wrong key, an
        unknown model."""
        if self.api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            return Status(HTTPStatus.UNAUTHORIZED, message="Incorrect API key provided")
        model = str(request.body.get("model", ""))
        chat = request.path in (OPENAI_PATH, OLLAMA_PATH)
        if chat and self.models is not None and model not in self.models:
            if request.api == "ollama":
                text = f'model "{model}" not found, try pulling it first'
            else:
                text = f"The model `{model}` does not exist or you do not have access to it."
            return Status(HTTPStatus.NOT_FOUND, message=text)
        return None

    def model_list(self, request: SeenRequest) -> Action | object:
        """The answer to a model list: a body, or the refusal."""
        with self._lock:
            self._probes.append(request)
            refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if self.models is None:
            return Status(HTTPStatus.NOT_FOUND, message=f"no route {request.path}")
        if request.path == OLLAMA_TAGS_PATH:
            return {"models": [{"name": name, "model": name} for name in self.models]}
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
                for name in self.models
            ],
        }

    # -- what was asked -----------------------------------------------------------------------

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def probes(self) -> list[SeenRequest]:
        """The model-list requests (`GET /v1/models`, `GET /api/tags`), oldest first."""
        with self._lock:
            return list(self._probes)

    def requests_for(self, match: str) -> list[SeenRequest]:
        """The requests whose user text contains `match`."""
        return [request for request in self.requests if match in request.user_text]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A bot may open dozens of connections at once; the default backlog of 5 drops SYNs.
    request_queue_size = 256
    llm: FakeLLM

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise keep their handler threads reading.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the clients expect; every answer carries its Content-Length.
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the requests are recorded; a test's output stays readable

    def _cut_when_down(self) -> bool:
        if self.server.llm.down_mode is None:
            return False
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        return True

    def do_GET(self) -> None:
        if self._cut_when_down():
            return
        if self.path not in (OPENAI_MODELS_PATH, OLLAMA_TAGS_PATH):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            return
        request = SeenRequest(
            path=self.path,
            body={},
            headers={name.lower(): value for name, value in self.headers.items()},
            received_at=time.time(),
        )
        answer = self.server.llm.model_list(request)
        if isinstance(answer, Status):
            self._act(answer, request, self.server.llm.stopping)
        else:
            self._send_json(HTTPStatus.OK, answer)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self._cut_when_down():
            return
        if self.path not in (OPENAI_PATH, OLLAMA_PATH):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
            return
        request = SeenRequest(
            path=self.path,
            body=body if isinstance(body, dict) else {},
            headers={name.lower(): value for name, value in self.headers.items()},
            received_at=time.time(),
        )
        llm = self.server.llm
        self._act(llm.next_action(request), request, llm.stopping)

    def _act(self, action: Action, request: SeenRequest, stopping: threading.Event) -> None:
        match action:
            case Cut():
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            case Status(code, retry_after, message):
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                self._send_json(code, _error_body(request, code, message), headers)
            case Stall(seconds, then):
                stopping.wait(seconds)
                self._reply(request, then)
            case Hold(gate, then):
                while not gate.is_set() and not stopping.is_set():
                    gate.wait(_POLL_SECONDS)  # poll: the server may stop meanwhile
                self._reply(request, then)
            case Thinks(reasoning, finish_reason, then):
                if request.thinking_off:
                    self._reply(request, then)
                else:
                    self._reply(request, Reply("", finish_reason, reasoning))
            case Reply():
                self._reply(request, action)

    def _reply(self, request: SeenRequest, reply: Reply) -> None:
        text = answer_to(request.user_text) if reply.text is None else reply.text
        model = str(request.body.get("model", ""))
        if request.api == "ollama":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if reply.reasoning:
                message["thinking"] = reply.reasoning
            body: dict[str, Any] = {
                "model": model,
                "created_at": datetime.now(UTC).isoformat(),
                "message": message,
                "done": True,
                "done_reason": reply.finish_reason,
                "prompt_eval_count": 1,
                "eval_count": len(text.split()),
            }
        else:
            choice_message: dict[str, Any] = {"role": "assistant", "content": text}
            if reply.reasoning:
                choice_message["reasoning"] = reply.reasoning
            words = len(text.split())
            body = {
                "id": f"chatcmpl-fake-{int(request.received_at * 1e6)}",
                "object": "chat.completion",
                "created": int(request.received_at),
                "model": model,
                "choices": [
                    {"index": 0, "message": choice_message, "finish_reason": reply.finish_reason}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": words, "total_tokens": words},
            }
        self._send_json(HTTPStatus.OK, body)

    def _send_json(self, code: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            # The client gave up first (its timeout after a stall): nobody is listening.
            self.close_connection = True


def _error_body(request: SeenRequest, code: int, message: str) -> object:
    if request.api == "ollama":
        return {"error": message}
    kinds = {
        HTTPStatus.TOO_MANY_REQUESTS: ("rate_limit_error", None),
        HTTPStatus.UNAUTHORIZED: ("invalid_request_error", "invalid_api_key"),
        HTTPStatus.NOT_FOUND: ("invalid_request_error", "model_not_found"),
    }
    kind, error_code = kinds.get(HTTPStatus(code), ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": error_code}}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ackbot.testing.fake_llm`: the fake model server by itself, until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m ackbot.testing.fake_llm",
        description="A scripted chat-model server speaking OpenAI's /v1/chat/completions and "
        "Ollama's /api/chat; every message gets 'An answer to: <its text>'.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8089, help="port; 0 picks a free one")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="a model it lists and answers for (repeatable); without it: any, and no list",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="answer 401 unless requests carry the key this variable holds",
    )
    parser.add_argument(
        "--fail",
        metavar="TEXT",
        action="append",
        default=[],
        help="answer HTTP 500 to every message containing TEXT (a poison message; repeatable)",
    )
    parser.add_argument(
        "--flap",
        nargs=2,
        type=float,
        metavar=("UP", "DOWN"),
        help="be up UP seconds, then down (port closed) DOWN seconds, again and again",
    )
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env) or None
        if api_key is None:
            parser.error(f"--api-key-env: {args.api_key_env} is not set")
    llm = FakeLLM(api_key=api_key, models=args.models, host=args.host, port=args.port)
    for text in args.fail:
        llm.script(text, Status(HTTPStatus.INTERNAL_SERVER_ERROR, message=f"poison: {text}"))
    llm.start()
    if args.flap:
        llm.flap(*args.flap)
    print(
        f"fake model server on {llm.url}: --backend openai --llm-url {llm.openai_url}, "
        f"or --backend ollama --llm-url {llm.url}",
        flush=True,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    llm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
