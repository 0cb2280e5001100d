"""An unsettled lease expires on the store's own timer: no client call is needed for the
message to be delivered again."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.harness import StreamReader, create

pytestmark = pytest.mark.slow

LEASE_SECONDS = 1


async def test_expired_lease_is_redelivered_without_any_client_call(stub):
    # Two idle streams wait before the message exists; after the first delivery the test makes
    # no call at all, so only the store's timer can hand the message out again.
    deliveries: asyncio.Queue = asyncio.Queue()
    readers = [
        StreamReader(
            stub,
            consumer=f"expiry-{n}",
            max_in_flight=1,
            lease_seconds=LEASE_SECONDS,
            queue=deliveries,
        )
        for n in range(2)
    ]
    try:
        for reader in readers:
            await reader.wait_open()
        await create(stub, "nobody settles me", id="expiring")

        first = await readers[0].next(within=10)
        first_at = time.monotonic()
        assert first.message.id == "expiring"
        assert first.attempt == 1

        second = await readers[0].next(within=10)
        waited = time.monotonic() - first_at
        assert second.message.id == "expiring"
        assert second.attempt == 2
        assert second.lease_token != first.lease_token
        # Not before the first lease ran out (a little slack for clock granularity), and soon
        # after it did.
        assert LEASE_SECONDS - 0.1 <= waited < LEASE_SECONDS + 5
    finally:
        for reader in readers:
            await reader.close()
