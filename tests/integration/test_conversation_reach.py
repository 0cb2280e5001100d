"""Conversations through the library and the CLI (issue 17, item 2): `Client.create`,
`Publisher.publish`, the list filter and `follow` take a `conversation_id`; `ackbot post
--conversation`, `ackbot list --conversation` and `ackbot get` show it. Against a real store."""

from __future__ import annotations

import asyncio

from ackbot.client import Client, Publisher
from ackbot.testing import wait_until
from ackbot.v1 import message_store_pb2 as pb
from tests.support.harness import RPC_TIMEOUT, get

from .test_cli import ackbot, json_lines

WITHIN = 20.0


async def create(stub, text: str, *, conversation_id: str) -> pb.Message:
    message = pb.Message(author="tester", text=text, conversation_id=conversation_id)
    request = pb.CreateMessageRequest(message=message)
    return (await stub.CreateMessage(request, timeout=RPC_TIMEOUT)).message


async def test_the_library_creates_lists_and_follows_one_conversation(store, stub):
    async with Client.connect(store.address) as client:
        first = await client.create("hello", author="ana", conversation_id="page-1")
        assert first.message.conversation_id == "page-1"
        async with Publisher(client) as publisher:
            published = await publisher.publish("again", author="bo", conversation_id="page-1")
        assert published.message.conversation_id == "page-1"
        await client.create("elsewhere", author="ana", conversation_id="page-2")
        await client.create("nowhere", author="ana")
        assert (await get(stub, first.message.id)).conversation_id == "page-1"

        listed = [m.text async for page in client.list(conversation_id="page-1") for m in page]
        assert listed == ["hello", "again"]

        seen: list[str] = []

        async def follow() -> None:
            async for message in client.follow(conversation_id="page-2"):
                seen.append(message.text)

        follower = asyncio.create_task(follow())
        try:
            # The follower gives no sign once its watch is open: post to page-2 until one shows,
            # with a message of another conversation before each, which must never show.
            markers = iter(range(1000))

            async def shows_a_marker() -> bool:
                if seen:
                    return True
                n = next(markers)
                await create(stub, f"other {n}", conversation_id="page-1")
                await create(stub, f"marker {n}", conversation_id="page-2")
                return False

            await wait_until(shows_a_marker, WITHIN, 0.2, what="the follower showing a marker")
            await create(stub, "not mine", conversation_id="page-1")
            await create(stub, "mine", conversation_id="page-2")
            await wait_until(lambda: seen[-1:] == ["mine"], WITHIN, what="the follower saw mine")
            assert all(text.startswith("marker") for text in seen[:-1])
        finally:
            follower.cancel()


async def test_the_cli_posts_lists_and_gets_a_conversation(store, stub):
    address = ("--store", store.address)
    posted = json_lines(
        await ackbot("post", "Hello", "--conversation", "thread-7", "--json", *address)
    )
    assert posted[0]["conversation_id"] == "thread-7"
    json_lines(await ackbot("post", "Other", "--conversation", "thread-8", "--json", *address))
    listed = json_lines(await ackbot("list", "--conversation", "thread-7", "--json", *address))
    assert [m["text"] for m in listed] == ["Hello"]

    shown = await ackbot("get", posted[0]["id"], *address)
    assert shown.returncode == 0, shown.stderr
    assert any(
        line.split() == ["conversation:", "thread-7"] for line in shown.stdout.splitlines()
    ), shown.stdout
