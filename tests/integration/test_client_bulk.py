"""The client library's erase_author and purge against a real store: the final count, the
progress callback after each batch, and a second call that finds nothing more."""

from __future__ import annotations

import grpc
import pytest

from ackbot.client import Client
from ackbot.client.errors import InvalidArgument
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

ERASED = 250  # over two erasure batches


async def test_erase_author_and_purge_report_progress_and_counts(start_store):
    store = await start_store.started()
    async with grpc.aio.insecure_channel(store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        await stub.BatchCreateMessages(
            pb.BatchCreateMessagesRequest(
                requests=[
                    pb.CreateMessageRequest(
                        message=pb.Message(id=f"s{i}", author="spammer", text="buy")
                    )
                    for i in range(ERASED)
                ]
            )
        )
        await stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(id="ok", author="ana", text="hi"))
        )
        await stub.MarkProcessed(pb.MarkProcessedRequest(id="ok"))
    async with Client.connect(store.address) as client:
        progress: list[int] = []
        assert await client.erase_author("spammer", on_progress=progress.append) == ERASED
        assert len(progress) >= 3  # two batches, then the one that found nothing
        assert progress == sorted(progress)
        assert progress[-1] == ERASED
        assert await client.erase_author("spammer") == 0

        assert await client.purge(pb.MESSAGE_STATE_DELETED, 0) == ERASED
        assert await client.purge(pb.MESSAGE_STATE_PROCESSED, 3600) == 0
        assert await client.purge(pb.MESSAGE_STATE_PROCESSED, 0) == 1
        with pytest.raises(InvalidArgument):
            await client.purge(pb.MESSAGE_STATE_PENDING, 0)
