"""The library's lease keeper (ackbot.client.leaser) against an in-process store: one loop
keeps every held lease, extending what is due together, on a Consume session when one is open;
a lease taken away is reported lost only after the wait for a redelivery, and a redelivery
that joins in time keeps the delivery alive."""

from __future__ import annotations

import asyncio
import time

import pytest

from ackbot.client import leaser as leaser_module
from ackbot.client.delivery import Delivery, Shutdown
from ackbot.client.leaser import Leaser
from ackbot.client.router import StoreClient
from ackbot.v1 import message_store_pb2 as pb

from .helpers import create, get, wait_until

LEASE = 1.0


class CountingStore(StoreClient):
    """A real StoreClient that remembers which ExtendLease calls started in the same turn of
    the event loop (the Leaser's batches)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.turns: list[list[str]] = []
        self._turn_open = False

    async def extend(self, message_id, lease_token, *, lease_seconds, budget_seconds):
        if not self._turn_open:
            # Calls made before the loop gets to this callback are of one turn.
            self.turns.append([])
            self._turn_open = True
            asyncio.get_running_loop().call_soon(self._close_turn)
        self.turns[-1].append(message_id)
        return await super().extend(
            message_id, lease_token, lease_seconds=lease_seconds, budget_seconds=budget_seconds
        )

    def _close_turn(self) -> None:
        self._turn_open = False


def held(store: StoreClient, leaser: Leaser, delivery: pb.Delivery) -> Delivery:
    return Delivery(
        delivery,
        received_at=time.monotonic(),
        generation=1,
        store=store,
        leaser=leaser,
        shutdown=Shutdown(),
        lease_seconds=LEASE,
    )


async def test_one_loop_keeps_every_held_lease_extending_them_together(store, stub, channels):
    ids = [f"lease-{n}" for n in range(3)]
    for message_id in ids:
        await create(stub, message_id, "hold me")
    client = CountingStore(channels(store.address))
    session = client.session(consumer="leaser", max_in_flight=3, lease_seconds=LEASE)
    assert await session.wait_open(), session.end_reason
    deliveries: list[pb.Delivery] = []
    while len(deliveries) < 3:
        deliveries += await asyncio.wait_for(anext(session), 10)
    leaser = Leaser(client, LEASE, on_lost=lambda d: pytest.fail(f"lost {d.message_id}"))
    keeper = asyncio.create_task(leaser.run())
    try:
        now = time.monotonic()
        for delivery in deliveries:
            job = held(client, leaser, delivery)
            job.received_at = now  # received together: due together
            leaser.hold(job)
        # Past three lease lengths, all three are still leased: extended, not expired.
        await wait_until(lambda: len(client.turns) >= 3, what="three rounds of extensions")
        for message_id in ids:
            assert (await get(stub, message_id)).state == pb.MESSAGE_STATE_LEASED
        # Each round extended all three in one turn of the loop (one Consume request).
        assert all(sorted(turn) == ids for turn in client.turns), client.turns
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        session.cancel()


async def test_a_lease_taken_away_is_lost_after_the_wait_unless_a_redelivery_joins(
    store, stub, channels, monkeypatch
):
    monkeypatch.setattr(leaser_module, "MIN_REDELIVERY_WAIT_SECONDS", 0.5)
    await create(stub, "taken", "hold me")
    client = StoreClient(channels(store.address))
    stream = client.stream(consumer="leaser", max_in_flight=1, lease_seconds=LEASE)
    assert await stream.wait_open(), stream.end_reason
    [delivery] = await asyncio.wait_for(anext(stream), 10)
    lost: list[str] = []
    leaser = Leaser(client, LEASE, on_lost=lambda d: lost.append(d.message_id))
    job = held(client, leaser, delivery)
    leaser.hold(job)
    keeper = asyncio.create_task(leaser.run())
    try:
        # Another party settles the lease away: the next extension finds it gone.
        await stub.ReleaseMessage(
            pb.ReleaseMessageRequest(id="taken", lease_token=delivery.lease_token), timeout=10
        )
        await wait_until(lambda: lost == ["taken"], what="the lease reported lost")
        assert job not in leaser
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        stream.cancel()
