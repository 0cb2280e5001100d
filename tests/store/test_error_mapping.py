"""The servicer's one place for errors (`maps_errors`), on a real in-process grpc.aio server:
domain errors become their status codes, anything unexpected becomes INTERNAL with no detail or
stack trace for the client, and the server goes on serving."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ackbot.store.errors import FieldViolation, InvalidArgument, NotFound, StorageUnavailable
from ackbot.store.grpc_errors import maps_errors
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc

SECRET = "password=hunter2 in /srv/secret/path.py"


class FailingServicer(pb_grpc.MessageStoreServicer):
    """GetMessage raises whatever the request's id names; the stream fails after one message."""

    @maps_errors
    async def GetMessage(self, request, context):
        if request.id == "bug":
            raise RuntimeError(SECRET)
        if request.id == "missing":
            raise NotFound("missing")
        if request.id == "bad":
            raise InvalidArgument([FieldViolation("id", "is not good enough")])
        if request.id == "down":
            raise StorageUnavailable("database unavailable: connection refused")
        return pb.GetMessageResponse(message=pb.Message(id=request.id))

    @maps_errors
    async def StreamUnprocessed(self, request, context):
        yield pb.StreamUnprocessedResponse()
        raise KeyError(SECRET)


@pytest.fixture
async def stub():
    server = grpc.aio.server()
    pb_grpc.add_MessageStoreServicer_to_server(FailingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.MessageStoreStub(channel)
    finally:
        await server.stop(None)


async def call_get(stub, message_id):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMessage(pb.GetMessageRequest(id=message_id), timeout=5)
    return caught.value


async def test_an_unexpected_error_is_internal_without_details_and_logged(stub, caplog):
    with caplog.at_level(logging.ERROR, logger="ackbot.store.grpc_errors"):
        error = await call_get(stub, "bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in error.details()
    assert "Traceback" not in error.details()
    # The server keeps the detail for its operators.
    assert "RuntimeError" in caplog.text
    assert SECRET in caplog.text
    # ... and goes on serving.
    response = await stub.GetMessage(pb.GetMessageRequest(id="fine"), timeout=5)
    assert response.message.id == "fine"


@pytest.mark.parametrize(
    ("message_id", "code"),
    [
        ("missing", grpc.StatusCode.NOT_FOUND),
        ("bad", grpc.StatusCode.INVALID_ARGUMENT),
        ("down", grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_domain_errors_map_to_their_codes(stub, message_id, code):
    error = await call_get(stub, message_id)
    assert error.code() == code
    if message_id == "missing":
        assert "'missing'" in error.details()


async def test_invalid_argument_carries_bad_request_details(stub):
    error = await call_get(stub, "bad")
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("id", "is not good enough")
    ]


async def test_an_error_in_the_middle_of_a_stream_is_internal_without_details(stub, caplog):
    call = stub.StreamUnprocessed(pb.StreamUnprocessedRequest(), timeout=5)
    with caplog.at_level(logging.ERROR, logger="ackbot.store.grpc_errors"):
        first = await call.read()
        assert list(first.deliveries) == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in caught.value.details()
    assert "KeyError" in caplog.text
