"""Issue 18 item 5: a bot whose Consume the store refuses (no token: UNAUTHENTICATED; another
role's token: PERMISSION_DENIED) has a configuration error, not a store that is down. Real store
(tokens on loopback) and a real bot: one ERROR line naming the role, the store and the code,
then quiet; health NOT_SERVING; none of asyncio's noise of a refused stream; and a SIGTERM still
stops it cleanly (it cannot recover without a new token, so it keeps trying, slowly).
"""

from __future__ import annotations

import re

import pytest

from ackbot.testing import Service, bot_service, store_service, wait_until
from ackbot.testing.process import LISTENING

pytestmark = pytest.mark.slow

TOKENS = {"producer": "prod-5c2e81aa", "bot": "bot-0d94f6b3"}
# What a refused stream used to log, over and over.
NOISE = (
    "Task was destroyed but it is pending",
    "asynchronous generator is already running",
    "unavailable",
)
# The refusal's own ERROR line: one, whatever the number of retries.
REFUSED = re.compile(r"refused the stream of role bot")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param(None, "UNAUTHENTICATED", id="no-token"),
        pytest.param("producer", "PERMISSION_DENIED", id="producer-token"),
    ],
)
async def test_a_refused_stream_is_one_error_line_and_not_serving(tmp_path, token, code):
    env = {f"ACKBOT_STORE_{role.upper()}_TOKEN": value for role, value in TOKENS.items()}
    store = store_service(tmp_path, name="token-store", env=env)
    services: list[Service] = [store]
    try:
        await store.astart()
        bot_env = {"ACKBOT_BOT_TOKEN": TOKENS[token]} if token else {}
        bot = bot_service(tmp_path, store.address, persona="refused", env=bot_env)
        services.append(bot)
        bot.start()

        def listening() -> re.Match[str] | None:
            assert bot.proc is not None
            assert bot.proc.poll() is None, bot.describe()
            return LISTENING.search(bot.log_text())

        match = await wait_until(listening, within=20, what="the bot is listening")
        bot.port = int(match.group(2))
        bot.address = f"127.0.0.1:{bot.port}"

        def refused_lines(level: str) -> list[str]:
            return [
                line
                for line in bot.log_text().splitlines()
                if REFUSED.search(line) and f" {level} " in line
            ]

        # The backoff starts at 1 s: a few refusals within these seconds, the first at ERROR,
        # the others at DEBUG.
        await wait_until(
            lambda: len(refused_lines("DEBUG")) >= 2, within=20, what="two more refusals"
        )
        [line] = refused_lines("ERROR")
        assert store.address in line, line
        assert code in line, line
        assert "--token-file" in line, line
        assert "ACKBOT_BOT_TOKEN" in line, line
        assert not await bot.aserving()
        assert not await bot.aserving("ackbot.bot")
        assert bot.proc is not None
        assert bot.proc.poll() is None, bot.describe()
        assert await bot.aterminate() == 0
        text = bot.log_text()
        for noise in NOISE:
            assert noise not in text, f"{noise!r} in the bot's log:\n{bot.describe()}"
    finally:
        for service in reversed(services):
            service.cleanup()


async def test_the_bot_token_serves_on_the_same_store(tmp_path):
    """The control: the same store and bot with the bot's own token serve, with no such line."""
    env = {f"ACKBOT_STORE_{role.upper()}_TOKEN": value for role, value in TOKENS.items()}
    store = store_service(tmp_path, name="token-store", env=env)
    services: list[Service] = [store]
    try:
        await store.astart()
        bot = bot_service(
            tmp_path, store.address, persona="allowed", env={"ACKBOT_BOT_TOKEN": TOKENS["bot"]}
        )
        services.append(bot)
        await bot.astart()
        assert not REFUSED.search(bot.log_text())
        assert await bot.aterminate() == 0
    finally:
        for service in reversed(services):
            service.cleanup()
