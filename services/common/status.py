"""Reading a google.rpc.Status: the one place that turns a failed call, or a status carried in
a response (a Consume settlement's, a BatchCreateMessages item's), into its code and the
ErrorInfo a program branches on. Shared by the bot's store client and ackbot.client."""

from __future__ import annotations

from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The StatusCode of a google.rpc.Status's `code` (UNKNOWN for a number gRPC lacks)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status the store sent with a failed call, details included; one made of
    the code and message alone when it sent none (refused before the store's code ran: gRPC's
    size limit, a failed connection) or one that disagrees with the call's code."""
    try:
        # An AioRpcError has what from_call reads (code, details, trailing metadata), though
        # it is not typed as a grpc.Call.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        status = None
    if status is None:
        status = status_pb2.Status(code=error.code().value[0], message=error.details() or "")
    return status


def error_info(status: status_pb2.Status) -> tuple[str, dict[str, str]]:
    """The reason and metadata of the status's ErrorInfo detail; ("", {}) without one."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}
