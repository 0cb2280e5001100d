"""FakeLLM: the server's life cycle, the whole-server failure modes (down, up, flap), the
scripting, and the record of what was asked."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Self

from ackbot.testing.fake_llm.script import (
    OLLAMA_PATH,
    OLLAMA_TAGS_PATH,
    OPENAI_PATH,
    Action,
    Reply,
    Rule,
    SeenRequest,
    Status,
)
from ackbot.testing.fake_llm.wire import Handler, Server

# How a server that is down fails: its port refuses connections, or it accepts and cuts each.
DOWN_REFUSE = "refuse"
DOWN_CUT = "cut"
DOWN_MODES = (DOWN_REFUSE, DOWN_CUT)


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
        self._rules: list[Rule] = []
        self._requests: list[SeenRequest] = []
        # The model-list requests (GET), kept apart: `requests` are the chat requests.
        self._probes: list[SeenRequest] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: Server | None = None
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
        server = Server((self._host, self._port), Handler)
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
            self._rules.append(Rule(match, list(actions), then))

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
