"""Entry point of `ackbot-bot` (also `python -m ackbot.bot`): the composition root.

Wires config, responder, model breaker, worker and the bot's own gRPC server, which has no
service of its own: health (SERVING only while the stream to a store is up and the model server
answers) and reflection, so orchestrators, `make run` and tests can tell when the bot is ready.
"""

from __future__ import annotations

# First: gRPC core reads GRPC_VERBOSITY when grpc is first imported (see the module).
import ackbot.common.grpc_core_logs  # noqa: F401

# isort: split
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

import grpc

from ackbot.bot.breaker import Breaker, Change, ModelGuard
from ackbot.bot.config import ALLOW_INSECURE_FLAG, BotConfig, load_config
from ackbot.bot.metrics import BotMetrics
from ackbot.bot.policy import Worker
from ackbot.bot.responder import (
    ResponderFactory,
    ResponderLoadError,
    close_responder,
    create_responder,
    load_factory,
)
from ackbot.common import eventloop
from ackbot.common.auth import Authenticator, AuthInterceptor, Role, read_token
from ackbot.common.flags import missing_extra
from ackbot.common.logs import configure_logging
from ackbot.common.metrics import MetricsInterceptor, MetricsServer
from ackbot.common.serving import (
    NOT_SERVING,
    SERVING,
    InsecureListen,
    add_health_and_reflection,
    bind,
    check_listen,
    create_server,
    read_pem,
    server_credentials,
    set_serving,
)

log = logging.getLogger("ackbot.bot")

# The health service name for the bot, next to the overall status "".
HEALTH_SERVICE_NAME = "ackbot.bot"
# The model server's own status (the breaker): NOT_SERVING while it is down, whatever the stream.
MODEL_HEALTH_NAME = "ackbot.bot.model"
# The top-level modules of the `bot` extra (pyproject.toml), which only the LLM backends use.
BOT_EXTRA_MODULES = ("openai", "httpx2")
# The bot's server only answers health checks; they finish at once.
SERVER_GRACE_SECONDS = 1.0


async def run(config: BotConfig, factory: ResponderFactory | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then stops gracefully."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers, not KeyboardInterrupt: with grpc.aio the interrupt would surface at an
    # arbitrary await and skip the drain that hands unstarted work back to the store.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)

    # The token file is read once, here; the worker's channels carry what it held.
    config = replace(config, token=config.bearer_token())
    # The bot's server has health (open to probes) and reflection; reflection takes the bot's
    # own token, the one it sends to its stores (auth.py's table: any role).
    authenticator = Authenticator({Role.BOT: config.token} if config.token else {})
    check_listen(
        config.listen,
        tls=config.tls_cert is not None,
        authenticated=authenticator.enabled,
        allow_flag=ALLOW_INSECURE_FLAG,
        allowed=config.allow_insecure_listen,
    )
    credentials = None
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    metrics = BotMetrics()
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics.grpc)]
    if authenticator.enabled:
        interceptors.append(AuthInterceptor(authenticator))
    server = create_server(interceptors=interceptors)
    # Bound first: a port in use is refused before anything else starts, with nothing to undo.
    address = bind(server, config.listen, credentials)
    metrics_server: MetricsServer | None = None
    if config.metrics_listen is not None:
        metrics_server = MetricsServer(metrics.registry, config.metrics_listen)
        try:
            metrics_server.start()
        except OSError:
            await server.stop(None)
            raise
    responder = await create_responder(config, factory)
    if hasattr(responder, "on_usage"):
        responder.on_usage = metrics.tokens
    health = await add_health_and_reflection(server, [])
    # The bot has no gRPC service of its own to reflect; its health names exist from the start
    # (NOT_SERVING) so that a Check for them answers before the stream is up.
    await set_serving(health, [HEALTH_SERVICE_NAME], serving=False)
    await health.set(MODEL_HEALTH_NAME, NOT_SERVING)
    # SERVING needs both: a stream to a store, and a model server that answers.
    up = {"stream": False, "model": False}

    async def show_health() -> None:
        await set_serving(health, [HEALTH_SERVICE_NAME], serving=up["stream"] and up["model"])
        await health.set(MODEL_HEALTH_NAME, SERVING if up["model"] else NOT_SERVING)

    async def on_connection(stream_up: bool) -> None:
        up["stream"] = stream_up
        await show_health()

    breaker = Breaker(
        str(getattr(responder, "url", "") or config.responder or config.backend),
        window=config.model_failure_window,
        probe_max_seconds=config.model_probe_max_seconds,
    )

    def count_change(change: Change) -> None:
        if change.notable:  # opens and closes, not each probe
            metrics.breaker_transition(change.state.value, change.cause)

    breaker.add_listener(count_change)

    worker: Worker | None = None

    def pause_reason(change: Change) -> str:
        # Not the breaker's own wording: its line is the one line per change an operator greps.
        return f"model server {breaker.url} down, {change.cause}: {change.detail}"

    async def on_model_down(change: Change) -> None:
        # The Consume window closes (the store sends nothing more) and what the bot holds
        # unstarted goes back without an attempt; running replies finish (docs/semantics.md).
        up["model"] = False
        if worker is not None:
            worker.pause(pause_reason(change))
        await show_health()

    async def on_model_up(change: Change) -> None:
        up["model"] = True
        if worker is not None:
            worker.resume()
        await show_health()

    guard = ModelGuard(
        breaker, getattr(responder, "probe", None), on_open=on_model_down, on_close=on_model_up
    )
    worker = Worker(config, guard.guard(responder), on_connection=on_connection, metrics=metrics)
    run_task: asyncio.Task[None] | None = None
    guard_task = asyncio.create_task(guard.run(), name="ackbot-bot-model-guard")
    try:
        await server.start()
        # Tests that pass port 0 read the real port from this exact line.
        log.info("listening on %s", address)
        log.info(
            "persona %s (%s), store %s, max_in_flight=%d, lease=%gs",
            config.persona,
            config.backend if config.responder is None else config.responder,
            ", ".join(config.stores),
            config.max_in_flight,
            config.lease_seconds,
        )
        stop_wait = asyncio.create_task(stop_requested.wait())
        if not breaker.taking_work:
            # The start-up check has not answered yet (a persona's answers at once, while the
            # server started): the stream opens drained, so the store sends nothing and no
            # attempt is spent, until the model answers; a missing model, a refused key or no
            # server costs no message anything.
            worker.pause(f"model server {breaker.url} not checked yet")
        run_task = asyncio.create_task(worker.run(), name="ackbot-bot-worker")
        await asyncio.wait({run_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if stop_requested.is_set():
            log.info("shutdown requested")
    finally:
        # NOT_SERVING first and for good: enter_graceful_shutdown ignores later updates, so the
        # worker's own "disconnected" callback cannot race it back.
        await health.enter_graceful_shutdown()
        guard_task.cancel()
        await worker.stop()
        await close_responder(responder)
        await server.stop(SERVER_GRACE_SECONDS)
        if metrics_server is not None:
            metrics_server.stop()
        log.info("bot stopped")
    if run_task is not None:
        await run_task  # surfaces a worker that failed on its own


# The files the bot reads at start, by flag: one it cannot read is a usage error (exit 2), said
# in one line before anything starts.
PEM_FLAGS = (
    ("--store-ca", "store_ca"),
    ("--store-cert", "store_cert"),
    ("--store-key", "store_key"),
    ("--tls-cert", "tls_cert"),
    ("--tls-key", "tls_key"),
    ("--tls-client-ca", "tls_client_ca"),
)


def unreadable_file(config: BotConfig) -> str | None:
    """`FLAG: cannot read PATH: REASON` for the first file of a flag that cannot be read."""
    try:
        if config.token_file is not None:
            read_token(config.token_file, "--token-file")
        for flag, name in PEM_FLAGS:
            path = getattr(config, name)
            if path is not None:
                read_pem(path, flag)
    except OSError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    problem = unreadable_file(config)
    if problem is not None:
        print(f"ackbot-bot: error: argument {problem}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    # httpx2 logs every request to the model server at INFO; the bot logs each answer itself.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if config.backend != "persona":
        # Imported only for an LLM backend: the HTTP clients take time to import, and a
        # client-only or persona-only install does not have them.
        try:
            from ackbot.bot.llm import BackendConfigError, chat_settings
        except ModuleNotFoundError as exc:
            missing = missing_extra(exc, BOT_EXTRA_MODULES)
            if missing is None:
                raise
            print(
                f"ackbot-bot: error: argument --backend: {missing} is not installed: the "
                f"{config.backend} backend needs ackbot[bot] (pip install 'ackbot[bot]')",
                file=sys.stderr,
            )
            return 2

        try:
            chat_settings(config)  # fails before anything starts, naming the flag at fault
        except BackendConfigError as exc:
            print(f"ackbot-bot: error: {exc}", file=sys.stderr)
            return 2
    factory: ResponderFactory | None = None
    if config.responder is not None:
        try:
            factory = load_factory(config.responder)
        except ResponderLoadError as exc:
            print(f"ackbot-bot: error: argument --responder: {exc}", file=sys.stderr)
            return 2
    try:
        eventloop.run(run(config, factory))
    except ResponderLoadError as exc:
        print(f"ackbot-bot: error: argument --responder: {exc}", file=sys.stderr)
        return 2
    except (OSError, InsecureListen) as exc:
        log.error("bot failed to start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
