"""The gRPC ceiling: a grpc.aio server that does nothing but answer, run as its own process.

It speaks ackbot's own messages (CreateMessageRequest in, CreateMessageResponse out; a stream
of StreamUnprocessedResponse), so a client pays the same serialization for the echo as for the
store, and the ratio of the two isolates what the store does on top of gRPC. Its methods live
under their own service name; the load generator calls both through the same generic stub.

    python -m bench.echo --listen 127.0.0.1:0     # logs `listening on HOST:PORT`
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from ackbot.common.serving import add_health_and_reflection, bind_insecure, set_serving
from ackbot.testing import Service, child_env
from ackbot.v1 import message_store_pb2 as pb

SERVICE_NAME = "bench.v1.Echo"
CREATE_METHOD = f"/{SERVICE_NAME}/Create"
STREAM_METHOD = f"/{SERVICE_NAME}/Stream"
# One delivery per stream response: each message costs the stream its own frame, the case the
# store's push path has when messages arrive one at a time.
DELIVERIES_PER_RESPONSE = 1


class Echo:
    def __init__(self) -> None:
        self._sequence = itertools.count(1)

    async def create(
        self, request: pb.CreateMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMessageResponse:
        # What a store's answer carries beyond the request: sequence, state, receive time.
        message = pb.Message()
        message.CopyFrom(request.message)
        message.sequence = next(self._sequence)
        message.state = pb.MESSAGE_STATE_PENDING
        message.receive_time.FromNanoseconds(time.time_ns())
        return pb.CreateMessageResponse(message=message)

    async def stream(
        self, request: pb.StreamUnprocessedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamUnprocessedResponse]:
        # Until the client cancels: the client counts what arrives in its measured window.
        for sequence in itertools.count(1):
            deliveries = []
            for offset in range(DELIVERIES_PER_RESPONSE):
                delivery = pb.Delivery(lease_token="echo-lease", attempt=1)
                message = delivery.message
                message.id = f"echo-{sequence}-{offset}"
                message.author = "echo"
                message.text = "hello from the echo stream"
                message.sequence = sequence
                message.state = pb.MESSAGE_STATE_LEASED
                deliveries.append(delivery)
            yield pb.StreamUnprocessedResponse(deliveries=deliveries)


def add_echo(server: grpc.aio.Server) -> None:
    echo = Echo()
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Create": grpc.unary_unary_rpc_method_handler(
            echo.create,
            request_deserializer=pb.CreateMessageRequest.FromString,
            response_serializer=pb.CreateMessageResponse.SerializeToString,
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            echo.stream,
            request_deserializer=pb.StreamUnprocessedRequest.FromString,
            response_serializer=pb.StreamUnprocessedResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    add_echo(server)
    health = await add_health_and_reflection(server, [SERVICE_NAME])
    address = bind_insecure(server, listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    await set_serving(health, [SERVICE_NAME], serving=True)
    print(f"listening on {address}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the ackbot services run on (uvloop where installed), so the ceiling and the
    store differ in what they do, not in their loop."""
    try:
        from ackbot.common.eventloop import loop_factory
    except ImportError:  # an ackbot from before the choice of loop: asyncio's own, like it
        return None
    return loop_factory()


def service(workdir: Path) -> Service:
    """This server as a process on a free loopback port, its log in `workdir`."""
    argv = [sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"]
    return Service("echo", argv, workdir / "echo.log", child_env())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 = any free")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.listen))


if __name__ == "__main__":
    main()
