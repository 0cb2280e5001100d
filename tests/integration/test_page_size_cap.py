"""ListMessages caps a page_size above the maximum (AIP-158) instead of refusing it; 0 still
means the default and a negative one stays INVALID_ARGUMENT. A real store over gRPC."""

from __future__ import annotations

import grpc
import pytest

from ackbot.common.limits import MAX_PAGE_SIZE
from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.harness import create_many

DEFAULT_PAGE_SIZE = 100


@pytest.fixture
def fast_store(start_store):
    # NORMAL: a thousand creates without a thousand fsyncs; durability is not what is tested.
    return start_store(args=["--sqlite-synchronous", "NORMAL"])


async def test_a_page_size_above_the_maximum_is_capped_not_refused(fast_store):
    async with grpc.aio.insecure_channel(fast_store.address) as channel:
        stub = pb_grpc.MessageStoreStub(channel)
        ids = await create_many(stub, MAX_PAGE_SIZE + 1, clients=10, prefix="cap")
        for asked in (MAX_PAGE_SIZE + 1, 2**31 - 1):
            page = await stub.ListMessages(
                pb.ListMessagesRequest(page_size=asked), timeout=RPC_TIMEOUT
            )
            assert len(page.messages) == MAX_PAGE_SIZE
            assert page.next_page_token  # the rest is one page further
            rest = await stub.ListMessages(
                pb.ListMessagesRequest(page_size=asked, page_token=page.next_page_token),
                timeout=RPC_TIMEOUT,
            )
            # Created by concurrent clients: arrival order is not `ids` order, the set is.
            listed = [m.id for m in [*page.messages, *rest.messages]]
            assert sorted(listed) == sorted(ids)
        default = await stub.ListMessages(pb.ListMessagesRequest(page_size=0), timeout=RPC_TIMEOUT)
        assert len(default.messages) == DEFAULT_PAGE_SIZE


async def test_a_negative_page_size_is_still_invalid_argument(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListMessages(pb.ListMessagesRequest(page_size=-1), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size: must be 0 or more (got -1)" in (caught.value.details() or "")
