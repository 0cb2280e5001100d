"""Stream: one stream's transitions, with no database, board or manager behind it."""

from __future__ import annotations

import asyncio

import pytest

from ackbot.store.models import State
from ackbot.store.stream import Stream
from ackbot.store.types import Delivery, Lease, StoredMessage

SECOND_NS = 1_000_000_000


def stream(max_in_flight: int = 3) -> Stream:
    return Stream(consumer="bot", max_in_flight=max_in_flight, lease_ns=SECOND_NS)


def delivery(message_id: str) -> Delivery:
    message = StoredMessage(
        id=message_id,
        sequence=1,
        author="alice",
        text="hi",
        create_time_ns=None,
        receive_time_ns=0,
        state=State.LEASED,
        reply_to=None,
        reply_id=None,
        delivery_attempts=1,
        last_error=None,
        lease_expire_ns=SECOND_NS,
        process_time_ns=None,
    )
    return Delivery(message, f"t-{message_id}", SECOND_NS)


async def parked(s: Stream) -> asyncio.Task[None]:
    """Parks `s` in a task, as its iteration does, and returns once it waits."""
    task = asyncio.create_task(s.park())
    await asyncio.sleep(0)  # one turn of the loop: the task runs up to its wait
    assert s.waiting
    return task


async def test_a_create_may_claim_only_for_a_parked_stream_with_room():
    s = stream(max_in_flight=2)
    assert s.room_for_create() == 0  # looking, not parked: it claims for itself
    task = await parked(s)
    assert s.room_for_create() == 2
    s.hold("a", "ta", SECOND_NS)
    s.hold("b", "tb", SECOND_NS)
    assert s.room_for_create() == 0  # full
    s.let_go("a")
    await task
    assert not s.waiting


@pytest.mark.parametrize("transition", ["claim_started", "drain", "close"])
async def test_a_create_never_claims_for_a_claiming_draining_or_closing_stream(transition):
    s = stream()
    task = await parked(s)
    getattr(s, transition)()
    assert s.room_for_create() == 0
    s.wake()
    await task


async def test_a_claim_takes_the_room_one_at_a_time_and_forgets_the_work_it_looks_for():
    s = stream()
    assert s.may_claim
    assert s.work_may_exist
    s.claim_started()
    assert s.claiming
    assert not s.may_claim
    assert not s.work_may_exist  # cleared before the claim: work made during it sets it again
    s.wake(work=True)
    assert s.work_may_exist


async def test_a_short_claim_leaves_no_work_and_a_full_one_may_have():
    short, full = stream(), stream()
    for s, got, is_full in [(short, [delivery("a")], False), (full, [delivery("b")], True)]:
        s.claim_started()
        s.look()
        s.claim_finished(got, full=is_full)
        assert not s.claiming
        assert s.wakeup.is_set()  # the iteration hands the batch out
        assert s.take_claimed() == got
        assert s.take_claimed() == []
    assert not short.work_may_exist
    assert full.work_may_exist


async def test_a_failed_own_claim_ends_the_iteration_with_its_error_once():
    s = stream()
    s.claim_started()
    error = RuntimeError("database gone")
    s.claim_failed(error)
    assert not s.claiming
    assert s.wakeup.is_set()
    assert s.take_claim_error() is error
    assert s.take_claim_error() is None


async def test_a_failed_claim_that_rode_with_a_create_ends_nothing():
    s = stream()
    s.claim_started()
    s.look()
    s.claim_failed(None)
    assert not s.claiming
    assert s.take_claim_error() is None
    assert not s.wakeup.is_set()  # the manager wakes every stream instead


async def test_a_lapsed_lease_keeps_its_slot_until_its_own_token_answers():
    s = stream(max_in_flight=2)
    s.hold("a", "ta", SECOND_NS)
    s.hold("b", "tb", 5 * SECOND_NS)
    assert s.lapse_due(SECOND_NS) == ["a"]
    assert s.lapsed == {"a": "ta"}
    assert s.room == 0
    assert not s.answer_lapse("a", "someone-else's")
    assert not s.answer_lapse("a", "")
    assert s.room == 0
    assert s.answer_lapse("a", "ta")
    assert s.room == 1


async def test_an_extension_after_a_lapse_holds_the_lease_again():
    s = stream(max_in_flight=1)
    s.hold("a", "ta", SECOND_NS)
    s.lapse_due(SECOND_NS)
    s.hold("a", "ta", 3 * SECOND_NS)
    assert s.lapsed == {}
    assert s.outstanding == {"a": ("ta", 3 * SECOND_NS)}
    assert s.room == 0


async def test_a_lower_window_takes_nothing_back_and_wakes_the_stream():
    s = stream(max_in_flight=3)
    s.hold("a", "ta", SECOND_NS)
    s.hold("b", "tb", SECOND_NS)
    s.look()
    s.set_limit(1)
    assert s.wakeup.is_set()
    assert s.room == -1
    s.look()
    task = await parked(s)
    assert s.room_for_create() == 0
    s.wake()
    await task


async def test_a_closed_stream_hands_back_what_it_held_and_forgets_its_lapses():
    s = stream()
    s.hold("a", "ta", SECOND_NS)
    s.hold("b", "tb", 5 * SECOND_NS)
    s.lapse_due(SECOND_NS)
    s.close()
    assert s.closing
    assert s.wakeup.is_set()
    assert s.closed() == [Lease("b", "tb")]
    assert s.outstanding == {}
    assert s.lapsed == {}
    assert s.room == s.max_in_flight


async def test_a_wake_that_lands_while_the_stream_looks_is_kept_for_its_park():
    s = stream()
    s.look()
    s.wake()  # e.g. during its claim's round trip
    await asyncio.wait_for(s.park(), timeout=5)  # returns at once: the wake was not lost
