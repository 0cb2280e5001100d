"""Huge values on the way out: a page of ListMessages filled with the largest texts the store
accepts must still reach a client with gRPC's default settings, whose receive limit is 4 MiB.

page_size may be up to 1000 and a text up to 16 KiB, so a full page could be 16 MiB; the contract
lets a page hold fewer than page_size messages (it says "at most"), with a next_page_token for
the rest, which is how a store keeps each response under the limit (StreamUnprocessed packs its
responses into 1 MiB for the same reason)."""

from __future__ import annotations

import asyncio

import pytest

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import create

# Enough 16 KiB texts to pass 4 MiB in one response: 4 MiB / 16.4 KB per message is about 256.
LARGE_MESSAGES = 300
CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024
CONCURRENT_CREATES = 20

pytestmark = pytest.mark.slow


async def test_a_full_page_of_the_largest_messages_reaches_a_default_client(store, stub):
    limit = asyncio.Semaphore(CONCURRENT_CREATES)

    async def create_large(number: int) -> str:
        async with limit:
            return (await create(stub, "x" * 16 * 1024, id=f"large-{number:03d}")).id

    ids = await asyncio.gather(*(create_large(n) for n in range(LARGE_MESSAGES)))
    assert len(ids) * 16 * 1024 > CLIENT_RECEIVE_LIMIT

    listed, token = [], ""
    while True:
        # `stub` is a channel with gRPC's defaults: whatever it can receive, any client can.
        page = await stub.ListMessages(
            pb.ListMessagesRequest(page_size=1000, page_token=token), timeout=RPC_TIMEOUT
        )
        assert page.ByteSize() <= CLIENT_RECEIVE_LIMIT
        listed.extend(message.id for message in page.messages)
        token = page.next_page_token
        if not token:
            break
    assert sorted(listed) == sorted(ids)
