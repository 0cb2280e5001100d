"""The fake model server on the wire: the HTTP server that can cut its connections, the
routes of both APIs, and the bodies each action answers with."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ackbot.testing.fake_llm.server import FakeLLM

# How often a held or stalled request looks whether the server is stopping.
_POLL_SECONDS = 0.05


class Server(ThreadingHTTPServer):
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


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the clients expect; every answer carries its Content-Length.
    protocol_version = "HTTP/1.1"
    server: Server

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
