"""A hypothesis state machine against a live store: random sequences of create, stream open and
drop, mark, release (with and without a reason, with the right, a stale or a made-up token),
extend and requeue, checked after every step against a small model of the contract.

The model is the state diagram of docs/semantics.md: PENDING -> LEASED on delivery (oldest
first, one attempt counted), LEASED -> PROCESSED on MarkProcessed, LEASED -> PENDING on release
or when the stream ends, -> DEAD instead when a release with a reason or the stream's end comes
on the last allowed attempt (a release without a reason gives the attempt back), DEAD -> PENDING
on requeue.

Streams take one message each (max_in_flight 1) and lease it for an hour, so leases never expire
during a run and every delivery is caused by a step: after each step the machine waits for
exactly the deliveries the model predicts (idle streams take the oldest deliverable messages)."""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ackbot.testing import RPC_TIMEOUT, store_service, sync_wait_until
from ackbot.v1 import message_store_pb2 as pb
from ackbot.v1 import message_store_pb2_grpc as pb_grpc
from tests.support.contract import Code, check_invariants, list_everything
from tests.support.harness import seconds

MAX_ATTEMPTS = 2  # small, so that runs reach DEAD and requeue often
MAX_STREAMS = 3
LEASE_SECONDS = 3600
DELIVERY_WAIT = 10.0
PENDING, LEASED, PROCESSED, DEAD = (
    pb.MESSAGE_STATE_PENDING,
    pb.MESSAGE_STATE_LEASED,
    pb.MESSAGE_STATE_PROCESSED,
    pb.MESSAGE_STATE_DEAD,
)
_runs = itertools.count(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    service = store_service(
        tmp_path_factory.mktemp("state-machine"), args=["--max-attempts", str(MAX_ATTEMPTS)]
    )
    try:
        yield service.start().wait_ready()
    finally:
        service.cleanup()


@dataclass
class ModelMessage:
    author: str
    text: str
    order: int
    state: int = PENDING
    attempts: int = 0
    last_error: str = ""
    has_reply: bool = False
    # The lease the store issued last, and the ones it issued before (stale ever since).
    token: str = ""
    old_tokens: list[str] = field(default_factory=list)


class Stream:
    """One StreamUnprocessed call, read by a thread into the machine's shared queue."""

    def __init__(self, stub, number: int, deliveries: queue.Queue) -> None:
        self.number = number
        self.holding: str | None = None
        request = pb.StreamUnprocessedRequest(
            consumer=f"model-{number}", max_in_flight=1, lease_duration=seconds(LEASE_SECONDS)
        )
        self.call = stub.StreamUnprocessed(request, timeout=600)
        self.call.initial_metadata()  # the store has registered the stream
        self._thread = threading.Thread(target=self._pump, args=(deliveries,), daemon=True)
        self._thread.start()

    def _pump(self, deliveries: queue.Queue) -> None:
        try:
            for response in self.call:
                for delivery in response.deliveries:
                    deliveries.put((self, delivery))
        except grpc.RpcError:
            pass  # cancelled by the machine, or the store went away (the steps will notice)

    def drop(self) -> None:
        self.call.cancel()
        self._thread.join(RPC_TIMEOUT)


class StoreMachine(RuleBasedStateMachine):
    address = ""

    def __init__(self) -> None:
        super().__init__()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.MessageStoreStub(self.channel)
        # Ids are unique per run: the store outlives the runs, the model does not.
        self.prefix = f"run{next(_runs)}-"
        self.messages: dict[str, ModelMessage] = {}
        self.streams: list[Stream] = []
        self.deliveries: queue.Queue = queue.Queue()
        self.stream_numbers = itertools.count(1)

    # -- helpers ----------------------------------------------------------------------------

    def call(self, rpc: str, request):
        try:
            return getattr(self.stub, rpc)(request, timeout=RPC_TIMEOUT), Code.OK
        except grpc.RpcError as caught:
            error = caught
        assert error.code() in (
            Code.INVALID_ARGUMENT,
            Code.NOT_FOUND,
            Code.ALREADY_EXISTS,
            Code.FAILED_PRECONDITION,
        ), f"{rpc}: {error}"
        return None, error.code()

    def deliverable(self) -> list[str]:
        pending = [mid for mid, m in self.messages.items() if m.state == PENDING]
        return sorted(pending, key=lambda mid: self.messages[mid].order)

    def idle_streams(self) -> list[Stream]:
        return [s for s in self.streams if s.holding is None]

    def take_predicted_deliveries(self) -> None:
        """Idle streams take the oldest deliverable messages, one each. Which stream gets which
        is up to the store; which messages go out is not."""
        expected = self.deliverable()[: len(self.idle_streams())]
        received = {}
        for _ in expected:
            try:
                stream, delivery = self.deliveries.get(timeout=DELIVERY_WAIT)
            except queue.Empty:
                raise AssertionError(f"expected deliveries of {expected}, got {received}") from None
            assert stream.holding is None, f"stream {stream.number} got a second delivery"
            message_id = delivery.message.id
            received[message_id] = stream
            model = self.messages.get(message_id)
            assert model is not None, f"delivered {message_id}, which this run never created"
            assert model.state == PENDING, f"delivered {message_id} while {model.state}"
            model.state = LEASED
            model.attempts += 1
            if model.token:
                model.old_tokens.append(model.token)
            model.token = delivery.lease_token
            assert delivery.attempt == model.attempts, (delivery, model)
            stream.holding = message_id
        assert set(received) == set(expected), f"delivered {sorted(received)}, not {expected}"

    def settled(self, message_id: str) -> None:
        for stream in self.streams:
            if stream.holding == message_id:
                stream.holding = None

    def lease_ended(self, model: ModelMessage, *, counted: bool, reason: str = "") -> None:
        """A lease given back: the last allowed attempt makes the message DEAD, unless the
        release says the delivery never started, which gives its attempt back."""
        if not counted:
            model.attempts -= 1
            model.state = PENDING
            return
        if reason:
            model.last_error = reason
        model.state = DEAD if model.attempts >= MAX_ATTEMPTS else PENDING

    def holder(self, index: int) -> Stream | None:
        holding = [s for s in self.streams if s.holding is not None]
        return holding[index % len(holding)] if holding else None

    # -- rules ------------------------------------------------------------------------------

    @rule(
        suffix=st.sampled_from("abcde"),
        author=st.sampled_from(["ana", "bob"]),
        text=st.sampled_from(["hi", "hello"]),
    )
    def create(self, suffix, author, text):
        message_id = self.prefix + suffix
        request = pb.CreateMessageRequest(
            message=pb.Message(id=message_id, author=author, text=text)
        )
        response, code = self.call("CreateMessage", request)
        existing = self.messages.get(message_id)
        if existing is None:
            assert code == Code.OK
            assert not response.already_existed
            self.messages[message_id] = ModelMessage(author, text, order=len(self.messages))
        elif (existing.author, existing.text) == (author, text):
            assert code == Code.OK
            assert response.already_existed
        else:
            assert code == Code.ALREADY_EXISTS
        self.take_predicted_deliveries()

    @precondition(lambda self: len(self.streams) < MAX_STREAMS)
    @rule()
    def open_stream(self):
        self.streams.append(Stream(self.stub, next(self.stream_numbers), self.deliveries))
        self.take_predicted_deliveries()

    @precondition(lambda self: self.streams)
    @rule(index=st.integers(0, MAX_STREAMS - 1))
    def drop_stream(self, index):
        stream = self.streams.pop(index % len(self.streams))
        stream.drop()
        if stream.holding is not None:
            model = self.messages[stream.holding]
            self.lease_ended(model, counted=True)
            # The store takes a dropped stream's lease back by itself, at once.
            self.wait_released(stream.holding)
        self.take_predicted_deliveries()

    def wait_released(self, message_id: str) -> None:
        model = self.messages[message_id]
        old_token = model.token

        def released() -> bool:
            # The old lease no longer works: the store has taken it back (the message may
            # already be leased again, under a new token, to another stream).
            _, code = self.call(
                "ExtendLease",
                pb.ExtendLeaseRequest(
                    id=message_id, lease_token=old_token, lease_duration=seconds(LEASE_SECONDS)
                ),
            )
            return code == Code.FAILED_PRECONDITION

        sync_wait_until(released, DELIVERY_WAIT, what=f"{message_id} released on stream end")

    @precondition(lambda self: self.messages)
    @rule(data=st.data(), with_reply=st.booleans())
    def mark(self, data, with_reply):
        message_id = data.draw(st.sampled_from(sorted(self.messages)))
        request = pb.MarkProcessedRequest(id=message_id)
        if with_reply:
            request.reply.CopyFrom(pb.Message(author="bot", text=f"re: {message_id}"))
        response, code = self.call("MarkProcessed", request)
        assert code == Code.OK
        model = self.messages[message_id]
        assert response.already_processed == (model.state == PROCESSED)
        if model.state != PROCESSED:
            model.state = PROCESSED
            model.has_reply = with_reply
            self.settled(message_id)
        assert response.HasField("reply") == model.has_reply
        self.take_predicted_deliveries()

    @precondition(lambda self: any(s.holding for s in self.streams))
    @rule(index=st.integers(0, MAX_STREAMS - 1), reason=st.sampled_from(["", "boom"]))
    def release(self, index, reason):
        stream = self.holder(index)
        model = self.messages[stream.holding]
        request = pb.ReleaseMessageRequest(
            id=stream.holding, lease_token=model.token, reason=reason
        )
        response, code = self.call("ReleaseMessage", request)
        assert code == Code.OK
        self.lease_ended(model, counted=bool(reason), reason=reason)
        assert response.message.state == model.state
        self.settled(stream.holding)
        self.take_predicted_deliveries()

    @precondition(lambda self: any(m.old_tokens for m in self.messages.values()))
    @rule(data=st.data(), extend=st.booleans())
    def settle_with_a_stale_token(self, data, extend):
        message_id = data.draw(
            st.sampled_from(sorted(mid for mid, m in self.messages.items() if m.old_tokens))
        )
        token = data.draw(st.sampled_from(self.messages[message_id].old_tokens))
        if extend:
            request = pb.ExtendLeaseRequest(
                id=message_id, lease_token=token, lease_duration=seconds(60)
            )
            _, code = self.call("ExtendLease", request)
        else:
            request = pb.ReleaseMessageRequest(id=message_id, lease_token=token, reason="x")
            _, code = self.call("ReleaseMessage", request)
        assert code == Code.FAILED_PRECONDITION

    @precondition(lambda self: self.messages)
    @rule(data=st.data(), token=st.sampled_from(["made-up", "0" * 32 + ":1"]))
    def settle_with_a_made_up_token(self, data, token):
        message_id = data.draw(st.sampled_from(sorted(self.messages)))
        _, code = self.call(
            "ReleaseMessage", pb.ReleaseMessageRequest(id=message_id, lease_token=token)
        )
        assert code == Code.FAILED_PRECONDITION

    @precondition(lambda self: any(s.holding for s in self.streams))
    @rule(index=st.integers(0, MAX_STREAMS - 1), lease=st.sampled_from([60, 1800, 3600]))
    def extend(self, index, lease):
        stream = self.holder(index)
        model = self.messages[stream.holding]
        request = pb.ExtendLeaseRequest(
            id=stream.holding, lease_token=model.token, lease_duration=seconds(lease)
        )
        response, code = self.call("ExtendLease", request)
        assert code == Code.OK
        assert response.message.state == LEASED
        assert response.message.HasField("lease_expire_time")

    @precondition(lambda self: self.messages)
    @rule(data=st.data())
    def requeue(self, data):
        message_id = data.draw(st.sampled_from(sorted(self.messages)))
        model = self.messages[message_id]
        response, code = self.call("RequeueMessage", pb.RequeueMessageRequest(id=message_id))
        if model.state != DEAD:
            assert code == Code.FAILED_PRECONDITION
            return
        assert code == Code.OK
        assert response.message.delivery_attempts == 0
        model.state, model.attempts = PENDING, 0
        self.take_predicted_deliveries()

    # -- checks -----------------------------------------------------------------------------

    def fetch(self, message_id: str) -> pb.Message:
        return self.stub.GetMessage(
            pb.GetMessageRequest(id=message_id), timeout=RPC_TIMEOUT
        ).message

    @invariant()
    def store_agrees_with_the_model(self):
        for message_id, model in self.messages.items():
            stored = self.fetch(message_id)
            actual = (stored.state, stored.delivery_attempts, bool(stored.reply_id))
            expected = (model.state, model.attempts, model.has_reply)
            assert actual == expected, (
                f"{message_id}: (state, attempts, reply) {actual} != {expected}"
            )
            if model.last_error:
                assert stored.last_error == model.last_error
        assert self.deliveries.empty(), f"an unexpected delivery: {self.deliveries.get()}"

    def teardown(self):
        """Leaves nothing deliverable behind for the next run: streams dropped, every message
        of this run processed. Then the whole store must satisfy the invariants."""
        try:
            for stream in self.streams:
                stream.drop()
            for message_id, model in self.messages.items():
                if model.state == LEASED:
                    self.wait_released(message_id)
                if model.state != PROCESSED:
                    self.stub.MarkProcessed(
                        pb.MarkProcessedRequest(id=message_id), timeout=RPC_TIMEOUT
                    )
            check_invariants(list_everything(self.stub), max_attempts=MAX_ATTEMPTS)
        finally:
            self.channel.close()


def test_store_follows_the_state_machine(store):
    StoreMachine.address = store.address
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=10,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert store.is_serving("ackbot.v1.MessageStore"), store.describe()
