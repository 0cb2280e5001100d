"""Bytes a gRPC client would never send: not HTTP/2 at all, HTTP/2 frames cut short or malformed,
gRPC messages over the request limit. The store must drop or answer the offending connection
and keep serving everyone else.

The frames are written by hand (the `h2` package is not a dependency): a 9-byte frame header and
HPACK header blocks made only of literal fields, which need no compression state."""

from __future__ import annotations

import contextlib
import socket
import struct

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ackbot.testing import RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb
from tests.support.contract import MAX_REQUEST_BYTES, RPCS, Code, check_store_healthy
from tests.support.harness import seconds

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
SOCKET_TIMEOUT = 5.0


def frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None):
    """One HTTP/2 frame; `length` may lie about the payload, to cut a frame short."""
    length = len(payload) if length is None else length
    return length.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK "literal header field without indexing, new name", lengths under 127."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_headers(rpc: str = "GetMessage") -> bytes:
    return b"".join(
        literal(name, value)
        for name, value in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", f"/ackbot.v1.MessageStore/{rpc}".encode()),
            (b":authority", b"fuzz"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    )


def grpc_message(length: int, body: bytes) -> bytes:
    """The gRPC length-prefixed message: uncompressed flag, then a length that may lie."""
    return b"\x00" + struct.pack(">I", length) + body


HANDSHAKE = PREFACE + frame(SETTINGS, 0, 0, b"")

# (case, the bytes a client sends before it hangs up)
HOSTILE_BYTES = [
    ("HTTP/1.1 request", b"GET / HTTP/1.1\r\nHost: store\r\n\r\n"),
    ("TLS client hello", bytes.fromhex("16030100a5010000a10303") + bytes(range(32))),
    ("1 MiB of 0xff", b"\xff" * (1 << 20)),
    ("half a preface", PREFACE[:10]),
    ("preface then nothing", PREFACE),
    ("SETTINGS cut short", PREFACE + frame(SETTINGS, 0, 0, b"\x00\x03", length=18)),
    ("SETTINGS of a bad length", PREFACE + frame(SETTINGS, 0, 0, b"\x00\x03\x00")),
    ("frame over the size limit", HANDSHAKE + frame(DATA, 0, 1, b"x" * 32, length=2**24 - 1)),
    ("HEADERS with a cut HPACK block", HANDSHAKE + frame(HEADERS, END_HEADERS, 1, b"\x00\x07:pa")),
    ("HEADERS on an even stream", HANDSHAKE + frame(HEADERS, END_HEADERS, 2, grpc_headers())),
    ("CONTINUATION without HEADERS", HANDSHAKE + frame(CONTINUATION, END_HEADERS, 1, b"\x00")),
    ("HEADERS never continued", HANDSHAKE + frame(HEADERS, 0, 1, grpc_headers())),
    ("PING of 7 bytes", HANDSHAKE + frame(PING, 0, 0, b"\x00" * 7)),
    ("zero WINDOW_UPDATE", HANDSHAKE + frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")),
    ("RST_STREAM on stream 0", HANDSHAKE + frame(RST_STREAM, 0, 0, b"\x00\x00\x00\x08")),
    (
        "gRPC message claiming 2 GiB",
        HANDSHAKE
        + frame(HEADERS, END_HEADERS, 1, grpc_headers())
        + frame(DATA, 0, 1, grpc_message(2**31 - 1, b"\x0a\x01x")),
    ),
    (
        "gRPC message shorter than its prefix, then END_STREAM",
        HANDSHAKE
        + frame(HEADERS, END_HEADERS, 1, grpc_headers())
        + frame(DATA, END_STREAM, 1, grpc_message(100, b"\x0a\x01x")),
    ),
    (
        "gRPC message prefix cut in the middle",
        HANDSHAKE
        + frame(HEADERS, END_HEADERS, 1, grpc_headers("StreamUnprocessed"))
        + frame(DATA, END_STREAM, 1, b"\x00\x00"),
    ),
    (
        "gRPC call to a method that does not exist",
        HANDSHAKE
        + frame(HEADERS, END_HEADERS, 1, grpc_headers("DropAllTables"))
        + frame(DATA, END_STREAM, 1, grpc_message(0, b"")),
    ),
]


def send_and_hang_up(address: str, data: bytes) -> None:
    """Sends `data` (as much as the store takes before it closes the connection), then closes
    the socket abruptly (RST, not FIN), like a crashed client."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
        with contextlib.suppress(OSError):  # the store may close first: that is allowed
            sock.sendall(data)
            # Read what the store has to say (a GOAWAY, perhaps), without waiting for it.
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("data", [b for _, b in HOSTILE_BYTES], ids=[n for n, _ in HOSTILE_BYTES])
def test_store_survives_hostile_bytes(store, sync_stub, data):
    send_and_hang_up(store.address, data)
    check_store_healthy(store, sync_stub)


def test_store_serves_others_while_a_connection_hangs_mid_frame(store, sync_stub):
    """A client that stops in the middle of a frame holds a connection, not the store."""
    host, port = store.address.rsplit(":", 1)
    half_sent = [
        PREFACE + frame(SETTINGS, 0, 0, b"\x00\x03", length=18),
        HANDSHAKE + frame(HEADERS, END_HEADERS, 1, grpc_headers())[:20],
        HANDSHAKE
        + frame(HEADERS, END_HEADERS, 1, grpc_headers())
        + frame(DATA, 0, 1, grpc_message(1000, b"\x0a")),
    ]
    sockets = [
        socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) for _ in half_sent
    ]
    try:
        for sock, data in zip(sockets, half_sent, strict=True):
            sock.sendall(data)
        created = sync_stub.CreateMessage(
            pb.CreateMessageRequest(message=pb.Message(author="ana", text="still here?")),
            timeout=RPC_TIMEOUT,
        )
        assert sync_stub.GetMessage(
            pb.GetMessageRequest(id=created.message.id), timeout=RPC_TIMEOUT
        )
        check_store_healthy(store, sync_stub)
    finally:
        for sock in sockets:
            sock.close()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    prefix=st.sampled_from(
        [b"", PREFACE, HANDSHAKE, HANDSHAKE + frame(HEADERS, END_HEADERS, 1, grpc_headers())]
    ),
    garbage=st.binary(max_size=2048),
)
def test_store_survives_arbitrary_bytes_after_any_handshake_stage(store, prefix, garbage):
    send_and_hang_up(store.address, prefix + garbage)
    assert store.is_serving("ackbot.v1.MessageStore"), store.describe()


# -- over the request limit -------------------------------------------------------------------

HUGE = "x" * (MAX_REQUEST_BYTES + 1)
OVERSIZED = {
    "CreateMessage": pb.CreateMessageRequest(message=pb.Message(author="ana", text=HUGE)),
    "GetMessage": pb.GetMessageRequest(id=HUGE),
    "ListMessages": pb.ListMessagesRequest(page_token=HUGE),
    "MarkProcessed": pb.MarkProcessedRequest(id="a", reply=pb.Message(author="b", text=HUGE)),
    "StreamUnprocessed": pb.StreamUnprocessedRequest(consumer=HUGE),
    "ReleaseMessage": pb.ReleaseMessageRequest(id="a", lease_token="t", reason=HUGE),
    "ExtendLease": pb.ExtendLeaseRequest(id="a", lease_token=HUGE, lease_duration=seconds(60)),
    "RequeueMessage": pb.RequeueMessageRequest(id=HUGE),
    "DeleteMessage": pb.DeleteMessageRequest(id=HUGE),
    "ApproveMessage": pb.ApproveMessageRequest(id=HUGE),
}


def outcome(stub, rpc: str, request) -> grpc.StatusCode:
    if rpc == "StreamUnprocessed":
        call = stub.StreamUnprocessed(request, timeout=RPC_TIMEOUT)
        try:
            return call.code()
        finally:
            call.cancel()
    try:
        getattr(stub, rpc)(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as error:
        return error.code()
    return Code.OK


@pytest.mark.parametrize("rpc", RPCS)
def test_request_over_the_limit_is_resource_exhausted_on_every_rpc(store, sync_stub, rpc):
    request = OVERSIZED[rpc]
    assert request.ByteSize() > MAX_REQUEST_BYTES
    assert outcome(sync_stub, rpc, request) == Code.RESOURCE_EXHAUSTED
    check_store_healthy(store, sync_stub)


def test_request_of_exactly_the_limit_is_let_through(store, sync_stub):
    """The limit is inclusive: a request of 64 KiB is decoded and judged on its fields (here an
    id far too long), not refused for its size."""
    # 1 byte of tag and 3 of length before the id.
    request = pb.GetMessageRequest(id="x" * (MAX_REQUEST_BYTES - 4))
    assert request.ByteSize() == MAX_REQUEST_BYTES
    assert outcome(sync_stub, "GetMessage", request) == Code.INVALID_ARGUMENT
    request.id += "x"
    assert outcome(sync_stub, "GetMessage", request) == Code.RESOURCE_EXHAUSTED
