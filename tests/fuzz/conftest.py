"""Fixtures for the fuzz tests: one live store per module (hypothesis runs hundreds of examples
against it, so starting a process per example would dominate the run), and a synchronous stub,
because hypothesis drives plain functions and the sync client needs no event loop."""

from __future__ import annotations

import grpc
import pytest

from ackbot.testing import store_service
from ackbot.v1 import message_store_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    service = store_service(tmp_path_factory.mktemp("fuzz"))
    try:
        yield service.start().wait_ready()
    finally:
        service.cleanup()


@pytest.fixture(scope="module")
def sync_stub(store):
    with grpc.insecure_channel(store.address) as sync_channel:
        yield pb_grpc.MessageStoreStub(sync_channel)
