"""ListMessages paging in both orders, and `ackbot tail` following new arrivals from the end."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from ackbot.testing import RPC_TIMEOUT, child_env, sync_wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import create_many

TAIL_START_TIMEOUT = 20.0


async def list_pages(stub, **fields) -> list[list[str]]:
    pages, token = [], ""
    while True:
        response = await stub.ListMessages(
            pb.ListMessagesRequest(page_size=4, page_token=token, **fields), timeout=RPC_TIMEOUT
        )
        pages.append([m.id for m in response.messages])
        token = response.next_page_token
        if not token:
            return pages


async def test_pages_oldest_first_and_newest_first_hold_every_message_once(stub):
    ids = await create_many(stub, 10, clients=1, prefix="paged")
    oldest_first = [i for page in await list_pages(stub) for i in page]
    newest_first = [i for page in await list_pages(stub, order_by="sequence desc") for i in page]
    assert oldest_first == ids
    assert newest_first == ids[::-1]


async def test_a_page_token_only_continues_the_order_it_was_made_for(stub):
    await create_many(stub, 3, clients=1, prefix="order")
    first = await stub.ListMessages(pb.ListMessagesRequest(page_size=1), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListMessages(
            pb.ListMessagesRequest(
                page_size=1, page_token=first.next_page_token, order_by="sequence desc"
            ),
            timeout=RPC_TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in caught.value.details()


def test_tail_prints_only_what_arrives_after_it_starts(store, tmp_path):
    with grpc.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)

        def post(message_id: str, text: str) -> None:
            message = pb.Message(id=message_id, author="tester", text=text)
            stub.CreateMessage(pb.CreateMessageRequest(message=message), timeout=RPC_TIMEOUT)

        for number in range(5):
            post(f"old-{number}", f"old news {number}")
        output = tmp_path / "tail.out"
        with output.open("w") as sink:
            tail = subprocess.Popen(
                [sys.executable, "-m", "ackbot.cli", "--store", store.address, "--json", "tail"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        try:
            # tail gives no sign that it has found the end, and a message posted before that
            # would not be printed: post markers until tail prints one, then the real message.
            markers = iter(range(1, 1000))

            def printed_a_marker() -> bool:
                if "marker-" in output.read_text():
                    return True
                number = next(markers)
                post(f"marker-{number}", f"marker {number}")
                return False

            sync_wait_until(printed_a_marker, TAIL_START_TIMEOUT, 0.3, what="tail printing")
            post("fresh-1", "fresh news")
            sync_wait_until(lambda: "fresh-1" in output.read_text(), 10, what="fresh-1 printed")
            printed = output.read_text()
            assert "old-" not in printed, printed
        finally:
            tail.terminate()
            tail.wait(10)
