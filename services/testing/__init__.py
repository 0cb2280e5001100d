"""Real ackbot processes for tests, benchmarks and chaos runs: start a store and bots on free
loopback ports, wait until they serve, read their logs, stop or kill them (`process`),
responders that fail or stall on purpose (`responders`), and a scripted chat-model server for
the bot's LLM backends (`fake_llm`)."""

from ackbot.testing.process import (
    PAGE_SIZE,
    READY_TIMEOUT,
    RPC_TIMEOUT,
    STOP_TIMEOUT,
    Security,
    Service,
    ServiceError,
    bot_service,
    child_env,
    store_service,
    sync_wait_until,
    wait_until,
)

__all__ = [
    "PAGE_SIZE",
    "READY_TIMEOUT",
    "RPC_TIMEOUT",
    "STOP_TIMEOUT",
    "Security",
    "Service",
    "ServiceError",
    "bot_service",
    "child_env",
    "store_service",
    "sync_wait_until",
    "wait_until",
]
