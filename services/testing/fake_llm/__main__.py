"""`python -m ackbot.testing.fake_llm`: the fake model server by itself (README, "Trying it
without a model")."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus

from ackbot.testing.fake_llm.script import Status
from ackbot.testing.fake_llm.server import FakeLLM


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
