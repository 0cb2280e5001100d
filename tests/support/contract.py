"""What docs/semantics.md and the proto comments promise, as code the fuzz tests check against:
the status codes each RPC may return, the request size limit, and the invariants a store's
contents must satisfy whatever requests it was sent."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ackbot.testing import PAGE_SIZE, RPC_TIMEOUT
from ackbot.v1 import message_store_pb2 as pb

Code = grpc.StatusCode

# The store's defaults, which the fuzz stores run with.
MAX_REQUEST_BYTES = 64 * 1024
MAX_ATTEMPTS = 5

# Per RPC, every code its proto comment documents for a healthy store (UNAVAILABLE is left out:
# the fuzz stores' databases are never unreachable or locked, so it would be a finding too).
# RESOURCE_EXHAUSTED is not listed: it is right exactly when the request is over the limit,
# which `check_outcome` decides from the request's size.
DOCUMENTED_CODES: dict[str, frozenset[grpc.StatusCode]] = {
    "CreateMessage": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS}),
    "GetMessage": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}),
    "ListMessages": frozenset({Code.OK, Code.INVALID_ARGUMENT}),
    # FAILED_PRECONDITION: a HELD message [MESSAGE_HELD], a stale context [CONTEXT_STALE].
    "MarkProcessed": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
    "StreamUnprocessed": frozenset({Code.OK, Code.INVALID_ARGUMENT}),
    "ReleaseMessage": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
    "ExtendLease": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
    "RequeueMessage": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
    "DeleteMessage": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}),
    "ApproveMessage": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
}
RPCS = tuple(DOCUMENTED_CODES)
REQUEST_TYPES = {
    rpc: getattr(pb, f"{rpc}Request") for rpc in RPCS if rpc != "StreamUnprocessed"
} | {"StreamUnprocessed": pb.StreamUnprocessedRequest}


def field_violations(error: grpc.RpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The google.rpc.BadRequest field violations in an error's status details (sync or aio)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no grpc-status-details-bin in {error}"
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    return violations


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo in an error's status details, if any (sync or aio): at most one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no grpc-status-details-bin in {error}"
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) <= 1, infos
    return infos[0] if infos else None


def check_outcome(rpc: str, request_size: int, error: grpc.RpcError | None) -> None:
    """Asserts that the outcome of one call is one the contract allows for it."""
    code = Code.OK if error is None else error.code()
    if request_size > MAX_REQUEST_BYTES:
        assert code == Code.RESOURCE_EXHAUSTED, f"{rpc} of {request_size} bytes: {code} {error}"
        return
    assert code in DOCUMENTED_CODES[rpc], f"{rpc}: undocumented {code}: {error}"
    if code == Code.INVALID_ARGUMENT:
        assert error is not None
        violations = field_violations(error)
        assert violations, f"{rpc}: INVALID_ARGUMENT without BadRequest details: {error}"
        for violation in violations:
            assert violation.field, f"{rpc}: a violation names no field: {error}"
            assert violation.description, f"{rpc}: a violation names no rule: {error}"
            # The message text alone must be enough for a person reading a log line.
            assert f"{violation.field}: {violation.description}" in error.details(), error


def call_sync(stub, rpc: str, request) -> tuple[object | None, grpc.RpcError | None]:
    """Makes a unary call; returns (response, None) or (None, the error)."""
    try:
        return getattr(stub, rpc)(request, timeout=RPC_TIMEOUT), None
    except grpc.RpcError as error:
        return None, error


def list_everything(stub) -> list[pb.Message]:
    messages, token = [], ""
    while True:
        response = stub.ListMessages(
            pb.ListMessagesRequest(page_size=PAGE_SIZE, page_token=token), timeout=RPC_TIMEOUT
        )
        messages.extend(response.messages)
        token = response.next_page_token
        if not token:
            return messages


def check_invariants(messages: list[pb.Message], max_attempts: int = MAX_ATTEMPTS) -> None:
    """The store's contents respect the state machine: valid states, at most one reply per
    message, replies born PROCESSED and never answered or delivered, attempts within bounds,
    lease and process times set exactly in the states that have them, sequences unique."""
    problems: list[str] = []
    by_id = {m.id: m for m in messages}
    if len(by_id) != len(messages):
        problems.append("two messages share an id")
    sequences = [m.sequence for m in messages]
    if sequences != sorted(set(sequences)):
        problems.append("sequences are not unique and increasing in listing order")
    valid_states = set(pb.MessageState.values()) - {pb.MESSAGE_STATE_UNSPECIFIED}
    replies_to: dict[str, list[str]] = {}
    for m in messages:
        name = f"{m.id!r}"
        if m.state not in valid_states:
            problems.append(f"{name}: state {m.state}")
            continue
        if not 0 <= m.delivery_attempts <= max_attempts:
            problems.append(f"{name}: {m.delivery_attempts} attempts")
        leased = m.state == pb.MESSAGE_STATE_LEASED
        if m.HasField("lease_expire_time") != leased:
            problems.append(f"{name}: lease_expire_time set={not leased} while {m.state}")
        processed = m.state == pb.MESSAGE_STATE_PROCESSED
        if m.HasField("process_time") != processed:
            problems.append(f"{name}: process_time set={not processed} while {m.state}")
        if m.reply_id and not processed:
            problems.append(f"{name}: has reply {m.reply_id!r} but is {m.state}")
        if m.reply_to:
            replies_to.setdefault(m.reply_to, []).append(m.id)
            if not processed:
                problems.append(f"reply {name} is {m.state}")
            if m.reply_id:
                problems.append(f"reply {name} has a reply {m.reply_id!r}")
            if m.delivery_attempts:
                problems.append(f"reply {name} was delivered {m.delivery_attempts} times")
    for original_id, reply_ids in replies_to.items():
        if len(reply_ids) > 1:
            problems.append(f"{original_id!r} has {len(reply_ids)} replies")
        original = by_id.get(original_id)
        if original is None:
            problems.append(f"replies {reply_ids} answer a missing message {original_id!r}")
        elif original.reply_id != reply_ids[0]:
            problems.append(f"{original_id!r} names reply {original.reply_id!r}, not {reply_ids}")
        elif original.reply_to:
            problems.append(f"a reply answers the reply {original_id!r}")
    for m in messages:
        if m.reply_id and m.reply_id not in by_id:
            problems.append(f"{m.id!r} names a missing reply {m.reply_id!r}")
    assert not problems, f"{len(problems)} invariant violations, first 20: {problems[:20]}"


def check_store_healthy(store, stub) -> None:
    """The process is up, health says SERVING, and its contents satisfy the invariants."""
    assert store.is_serving("ackbot.v1.MessageStore"), store.describe()
    check_invariants(list_everything(stub))
