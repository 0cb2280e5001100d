"""Issue 11's duplicate model calls, tried as a new user would: a real bot with an LLM backend is
answering 50 slow messages when the store is killed with SIGKILL and restarted on the same port
and file. The restarted store hands the 50 messages out again; each redelivery joins the reply
already running for it, so the model is asked exactly once per message, and every message is
answered exactly once, with no duplicate refused at MarkProcessed.

The model server (ackbot.testing.fake_llm) holds every answer behind a gate until the
redeliveries have arrived, so the test does not depend on how slow a "slow" model is.
"""

from __future__ import annotations

import collections
import socket
import threading

import grpc
import pytest

from ackbot.testing import bot_service, store_service, wait_until
from ackbot.testing.fake_llm import FakeLLM, Hold, answer_to
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import check_answered_once, create_many, list_all, wait_settled

pytestmark = pytest.mark.slow

MESSAGES = 50
# Leases far longer than the test: what happens is the restart's doing, not an expiry's.
LEASE_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_store_restart_mid_reply_costs_no_second_model_call(tmp_path):
    gate = threading.Event()
    db_path = tmp_path / "restart.db"
    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    services = []
    with FakeLLM(default=Hold(gate)) as llm:
        try:
            first = store_service(tmp_path, db_path=db_path, args=listen, name="first")
            services.append(first)
            await first.astart()
            bot = bot_service(
                tmp_path,
                first.address,
                persona="llm",
                max_in_flight=64,
                lease_seconds=LEASE_SECONDS,
                args=[
                    "--backend",
                    "openai",
                    "--llm-url",
                    llm.openai_url,
                    "--llm-model",
                    "slow-1",
                    "--llm-timeout-seconds",
                    "300",
                ],
            )
            services.append(bot)
            await bot.astart()
            async with grpc.aio.insecure_channel(first.address) as channel:
                stub = pb_grpc.MessageStoreStub(channel)
                ids = await create_many(stub, MESSAGES, clients=5, prefix="slow")
                await wait_until(
                    lambda: len(llm.requests) == MESSAGES,
                    within=60,
                    what=f"the model asked about all {MESSAGES} messages",
                )
            assert await first.akill() == -9

            second = store_service(tmp_path, db_path=db_path, args=listen, name="second")
            services.append(second)
            await second.astart()
            assert second.address == first.address
            async with grpc.aio.insecure_channel(second.address) as channel:
                stub = pb_grpc.MessageStoreStub(channel)

                async def all_redelivered() -> bool:
                    leased = await list_all(stub, state=pb.MESSAGE_STATE_LEASED)
                    return len(leased) == MESSAGES and all(m.delivery_attempts == 2 for m in leased)

                await wait_until(all_redelivered, within=60, what="every message redelivered")
                await wait_until(
                    lambda: bot.log_text().count("joined the running reply") == MESSAGES,
                    within=30,
                    what="every redelivery joined its running reply",
                )
                gate.set()
                await wait_settled(stub, expected_processed=2 * MESSAGES, within=60)
                messages = await list_all(stub)
        finally:
            gate.set()
            for service in reversed(services):
                service.cleanup()

    replies = check_answered_once(messages, ids, personas={"llm"})
    asked = collections.Counter(request.user_text for request in llm.requests)
    assert asked == {f"hello number {message_id}": 1 for message_id in ids}, (
        "one model call per message"
    )
    for message_id in ids:
        assert replies[message_id].text == answer_to(f"hello number {message_id}")
    originals = [m for m in messages if not m.reply_to]
    assert {m.delivery_attempts for m in originals} == {2}
    log = bot.log_text()
    assert "duplicate prevented" not in log
    assert "abandoning" not in log
