"""MessageRepository against a real database: creating, reading, claiming and settling.

Every test runs on a SQLite file and, when ACKBOT_TEST_POSTGRES_URL is set, on PostgreSQL in a
schema of its own. Time is the fake clock from conftest, so leases and retry_after are exact.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, insert, select

from ackbot.store.database import Database, create_engine
from ackbot.store.errors import AlreadyExists, FailedPrecondition, NotFound, StorageUnavailable
from ackbot.store.ids import _ALPHABET
from ackbot.store.migrations import upgrade_to_head
from ackbot.store.models import MessageRow, State
from ackbot.store.repository import MessageRepository
from ackbot.store.types import Delivery, Lease, NewMessage, StoredMessage
from ackbot.store.validation import ID_PATTERN

from .conftest import SECOND_NS

LEASE_NS = 10 * SECOND_NS


async def create(repo: MessageRepository, text: str, *, id: str = "", author: str = "alice"):
    result = await repo.create_message(NewMessage(author=author, text=text, id=id))
    assert not result.already_existed
    return result.message


async def claim_one(repo: MessageRepository, lease_ns: int = LEASE_NS) -> Delivery:
    deliveries = await repo.claim(1, lease_ns)
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


async def count_rows(repo: MessageRepository, *where) -> int:
    async with repo._database.engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(MessageRow).where(*where))


async def all_messages(repo: MessageRepository) -> list[StoredMessage]:
    return await repo.list_messages(limit=100_000)


# -- create -----------------------------------------------------------------------------------


async def test_assigned_ids_are_26_chars_unique_and_in_the_id_alphabet(repo):
    messages = [await create(repo, f"hello {i}") for i in range(20)]

    ids = [m.id for m in messages]
    assert len(set(ids)) == 20
    for message_id in ids:
        assert len(message_id) == 26
        assert set(message_id) <= set(_ALPHABET)
        assert ID_PATTERN.fullmatch(message_id)


async def test_create_keeps_the_client_id_and_fields(repo, clock):
    clock.advance(ns=123)

    message = await create(repo, "hi there", id="client:42.a~b-c_d", author="bob")

    assert message.id == "client:42.a~b-c_d"
    assert message.author == "bob"
    assert message.text == "hi there"
    assert message.state is State.PENDING
    assert message.reply_to is None
    assert message.reply_id is None
    assert message.delivery_attempts == 0
    assert message.last_error is None
    assert message.lease_expire_ns is None
    assert message.process_time_ns is None
    assert message.receive_time_ns == clock.now_ns
    assert await repo.get_message("client:42.a~b-c_d") == message


async def test_create_is_idempotent_for_the_same_author_and_text(repo):
    first = await create(repo, "same", id="m1")

    again = await repo.create_message(NewMessage(author="alice", text="same", id="m1"))

    assert again.already_existed
    assert again.message == first
    assert again.message.sequence == first.sequence
    assert await count_rows(repo) == 1


async def test_create_idempotent_shows_the_current_state_and_reply(repo):
    await create(repo, "same", id="m1")
    marked = await repo.mark_processed("m1", NewMessage(author="bot", text="re"))

    again = await repo.create_message(NewMessage(author="alice", text="same", id="m1"))

    assert again.already_existed
    assert again.message.state is State.PROCESSED
    assert again.message.reply_id == marked.reply.id


@pytest.mark.parametrize(("author", "text"), [("mallory", "same"), ("alice", "different")])
async def test_create_with_conflicting_content_fails_and_changes_nothing(repo, author, text):
    first = await create(repo, "same", id="m1")

    with pytest.raises(AlreadyExists) as caught:
        await repo.create_message(NewMessage(author=author, text=text, id="m1"))

    assert caught.value.message_id == "m1"
    assert "'m1'" in str(caught.value)
    assert await repo.get_message("m1") == first
    assert await count_rows(repo) == 1


async def test_sequences_follow_arrival_not_ids_or_client_clocks(repo):
    # Ids sort backwards and client clocks run backwards: neither may decide the order.
    created = []
    for i in range(6):
        result = await repo.create_message(
            NewMessage(
                author="alice",
                text=f"t{i}",
                id=f"z{9 - i}",
                create_time_ns=(100 - i) * SECOND_NS,
            )
        )
        created.append(result.message)

    sequences = [m.sequence for m in created]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)
    assert [m.id for m in await all_messages(repo)] == [m.id for m in created]
    claimed = await repo.claim(10, LEASE_NS)
    assert [d.message.id for d in claimed] == [m.id for m in created]


async def test_create_time_is_stored_exactly_and_never_used_for_lookup(repo):
    create_time_ns = 1761333653306 * 1_000_000
    message_id = "1761333653305-h0jgid21p"
    result = await repo.create_message(
        NewMessage(author="alice", text="hi", id=message_id, create_time_ns=create_time_ns)
    )
    assert result.message.create_time_ns == create_time_ns

    got = await repo.get_message(message_id)

    assert got.id == message_id
    assert got.create_time_ns == 1_761_333_653_306_000_000
    for wrong in ("1761333653306", "1761333653306-h0jgid21p", "1761333653305"):
        with pytest.raises(NotFound):
            await repo.get_message(wrong)


async def test_create_time_is_optional(repo):
    message = await create(repo, "no clock")
    assert message.create_time_ns is None
    assert (await repo.get_message(message.id)).create_time_ns is None


# -- get / list -------------------------------------------------------------------------------


async def test_get_unknown_id_raises_not_found_naming_it(repo):
    with pytest.raises(NotFound) as caught:
        await repo.get_message("nope-123")
    assert caught.value.message_id == "nope-123"
    assert "nope-123" in str(caught.value)


async def test_list_pages_by_after_sequence_and_limit(repo):
    created = [await create(repo, f"t{i}") for i in range(7)]

    pages = []
    after = 0
    while True:
        page = await repo.list_messages(after_sequence=after, limit=3)
        if not page:
            break
        pages.append([m.id for m in page])
        after = page[-1].sequence

    ids = [m.id for m in created]
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert await repo.list_messages(after_sequence=created[2].sequence, limit=2) == created[3:5]


async def test_list_newest_first_pages_backwards_by_before_sequence(repo):
    created = [await create(repo, f"n{i}") for i in range(5)]
    newest = await repo.list_messages(newest_first=True, limit=2)
    assert [m.id for m in newest] == [created[4].id, created[3].id]
    older = await repo.list_messages(
        newest_first=True, before_sequence=newest[-1].sequence, limit=10
    )
    assert [m.id for m in older] == [m.id for m in reversed(created[:3])]


async def test_list_filters_by_state_with_lapsed_leases_shown_as_pending(make_repo, clock):
    repo = await make_repo(max_attempts=1)
    await create(repo, "dead", id="dead")
    await claim_one(repo, SECOND_NS)
    clock.advance(2)
    assert await repo.claim(1, SECOND_NS) == []  # the second delivery would be one too many
    for name in ("lapsed", "leased", "processed", "pending"):
        await create(repo, name, id=name)
    deliveries = await repo.claim(3, SECOND_NS)
    assert [d.message.id for d in deliveries] == ["lapsed", "leased", "processed"]
    await repo.extend_lease("leased", deliveries[1].lease_token, 100 * SECOND_NS)
    await repo.mark_processed("processed", None)
    clock.advance(2)  # "lapsed" is still LEASED in its row, but its lease is over

    assert await states(repo, State.PENDING) == ["lapsed", "pending"]
    assert await states(repo, State.LEASED) == ["leased"]
    assert await states(repo, State.PROCESSED) == ["processed"]
    assert await states(repo, State.DEAD) == ["dead"]
    by_id = {m.id: m for m in await all_messages(repo)}
    assert by_id["lapsed"].state is State.PENDING
    assert by_id["lapsed"].lease_expire_ns is None
    assert by_id["leased"].state is State.LEASED
    assert by_id["leased"].lease_expire_ns == clock.now_ns - 2 * SECOND_NS + 100 * SECOND_NS
    assert (await repo.get_message("lapsed")).state is State.PENDING


async def states(repo: MessageRepository, state: State) -> list[str]:
    return [m.id for m in await repo.list_messages(state=state)]


async def test_list_filters_by_reply_to_and_shows_reply_id_on_the_original(repo):
    await create(repo, "question one", id="q1")
    await create(repo, "question two", id="q2")
    before = await repo.get_message("q1")
    assert before.reply_id is None

    marked = await repo.mark_processed("q1", NewMessage(author="bot", text="answer one"))

    replies = await repo.list_messages(reply_to="q1")
    assert [m.id for m in replies] == [marked.reply.id]
    assert replies[0].reply_to == "q1"
    assert await repo.list_messages(reply_to="q2") == []
    assert (await repo.get_message("q1")).reply_id == marked.reply.id
    listed = {m.id: m for m in await all_messages(repo)}
    assert listed["q1"].reply_id == marked.reply.id
    assert listed["q2"].reply_id is None
    assert listed[marked.reply.id].reply_id is None


# -- claim ------------------------------------------------------------------------------------


async def test_claim_delivers_oldest_first_within_the_limit(repo, clock):
    ids = [(await create(repo, f"t{i}")).id for i in range(5)]

    first = await repo.claim(2, LEASE_NS)
    second = await repo.claim(10, LEASE_NS)

    assert [d.message.id for d in first] == ids[:2]
    assert [d.message.id for d in second] == ids[2:]
    assert await repo.claim(10, LEASE_NS) == []
    for delivery in first + second:
        assert delivery.message.state is State.LEASED
        assert delivery.message.delivery_attempts == 1
        assert delivery.lease_expire_ns == clock.now_ns + LEASE_NS
        assert delivery.message.lease_expire_ns == delivery.lease_expire_ns
        assert delivery.lease_token
    assert len({d.lease_token for d in first + second}) == 5


async def test_a_leased_message_is_claimed_again_only_after_its_lease_expires(repo, clock):
    await create(repo, "work", id="m1")
    first = await claim_one(repo)

    clock.advance(ns=LEASE_NS - 1)
    assert await repo.claim(10, LEASE_NS) == []
    assert (await repo.get_message("m1")).state is State.LEASED

    clock.advance(ns=1)
    second = await claim_one(repo)
    assert second.message.id == "m1"
    assert second.lease_token != first.lease_token
    assert second.message.delivery_attempts == 2


async def test_attempts_are_counted_and_the_claim_after_the_last_makes_it_dead(repo, clock):
    await create(repo, "poison", id="m1")
    attempts = []
    for _ in range(repo.max_attempts):
        attempts.append((await claim_one(repo)).message.delivery_attempts)
        clock.advance(ns=LEASE_NS)
    assert attempts == [1, 2, 3]

    assert await repo.claim(10, LEASE_NS) == []

    dead = await repo.get_message("m1")
    assert dead.state is State.DEAD
    assert dead.delivery_attempts == 3
    assert dead.last_error == "delivered 3 times without being processed"
    clock.advance(3600)
    assert await repo.claim(10, LEASE_NS) == []


async def test_dead_lettering_in_a_claim_does_not_use_up_its_limit(make_repo, clock):
    # A message at max_attempts is not deliverable: claim(1) must deliver the next one
    # instead of returning nothing while deliverable work waits (a stream would stall).
    repo = await make_repo(max_attempts=1)
    await create(repo, "poison", id="poison")
    await create(repo, "fine", id="fine")
    await claim_one(repo)
    clock.advance(ns=LEASE_NS)

    deliveries = await repo.claim(1, LEASE_NS)

    assert (await repo.get_message("poison")).state is State.DEAD
    assert [d.message.id for d in deliveries] == ["fine"]


async def test_replies_are_never_claimed(repo):
    await create(repo, "question", id="q1")
    delivery = await claim_one(repo)
    marked = await repo.mark_processed(
        "q1", NewMessage(author="bot", text="answer"), delivery.lease_token
    )

    assert marked.reply.state is State.PROCESSED
    assert await repo.claim(10, LEASE_NS) == []
    assert await repo.next_visible_ns() is None


# -- mark_processed ---------------------------------------------------------------------------


async def test_mark_processed_stores_the_reply_and_processes_the_original(repo, clock):
    original = await create(repo, "question", id="q1")
    delivery = await claim_one(repo)
    clock.advance(1)

    result = await repo.mark_processed(
        "q1", NewMessage(author="bot", text="answer"), delivery.lease_token
    )

    assert not result.already_processed
    reply = result.reply
    assert reply is not None
    assert len(reply.id) == 26
    assert reply.author == "bot"
    assert reply.text == "answer"
    assert reply.reply_to == "q1"
    assert reply.state is State.PROCESSED
    assert reply.sequence > original.sequence
    assert reply.process_time_ns == clock.now_ns
    assert result.message.state is State.PROCESSED
    assert result.message.reply_id == reply.id
    assert result.message.process_time_ns == clock.now_ns
    assert result.message.lease_expire_ns is None
    assert await repo.get_message("q1") == result.message
    assert await repo.get_message(reply.id) == reply


async def test_mark_processed_twice_returns_the_first_reply_and_stores_no_second(repo):
    await create(repo, "question", id="q1")
    first = await repo.mark_processed("q1", NewMessage(author="bot", text="answer"))

    second = await repo.mark_processed("q1", NewMessage(author="bot", text="another answer"))

    assert second.already_processed
    assert second.reply == first.reply
    assert second.message == first.message
    assert await count_rows(repo, MessageRow.reply_to == "q1") == 1
    assert await count_rows(repo) == 2


async def test_mark_processed_without_a_reply(repo):
    await create(repo, "question", id="q1")

    result = await repo.mark_processed("q1", None)

    assert not result.already_processed
    assert result.reply is None
    assert result.message.state is State.PROCESSED
    assert result.message.reply_id is None
    again = await repo.mark_processed("q1", NewMessage(author="bot", text="late answer"))
    assert again.already_processed
    assert again.reply is None
    assert await count_rows(repo) == 1


async def test_mark_processed_unknown_id_raises_not_found(repo):
    with pytest.raises(NotFound) as caught:
        await repo.mark_processed("ghost", NewMessage(author="bot", text="answer"))
    assert caught.value.message_id == "ghost"
    assert await count_rows(repo) == 0


async def test_a_dead_message_can_still_be_processed(repo, clock):
    await create(repo, "slow", id="m1")
    for _ in range(repo.max_attempts):
        await claim_one(repo)
        clock.advance(ns=LEASE_NS)
    assert await repo.claim(1, LEASE_NS) == []
    assert (await repo.get_message("m1")).state is State.DEAD

    result = await repo.mark_processed("m1", NewMessage(author="bot", text="finally"))

    assert not result.already_processed
    assert result.message.state is State.PROCESSED
    assert result.message.reply_id == result.reply.id


async def test_a_stale_lease_token_does_not_block_processing(repo, clock):
    await create(repo, "work", id="m1")
    stale = await claim_one(repo)
    clock.advance(ns=LEASE_NS)
    current = await claim_one(repo)
    assert current.lease_token != stale.lease_token

    result = await repo.mark_processed("m1", NewMessage(author="bot", text="hi"), stale.lease_token)

    assert not result.already_processed
    assert result.message.state is State.PROCESSED
    with pytest.raises(FailedPrecondition):
        await repo.release("m1", current.lease_token, reason="late", retry_after_ns=0)


async def test_mark_processed_of_a_pending_message_without_a_lease(repo):
    await create(repo, "work", id="m1")
    result = await repo.mark_processed("m1", None, "")
    assert result.message.state is State.PROCESSED
    assert await repo.claim(10, LEASE_NS) == []


# -- release ----------------------------------------------------------------------------------


async def test_release_with_reason_keeps_the_error_and_delays_by_retry_after(repo, clock):
    await create(repo, "flaky", id="m1")
    delivery = await claim_one(repo)

    released = await repo.release(
        "m1", delivery.lease_token, reason="model timed out", retry_after_ns=5 * SECOND_NS
    )

    assert released.state is State.PENDING
    assert released.last_error == "model timed out"
    assert released.delivery_attempts == 1
    assert await repo.next_visible_ns() == clock.now_ns + 5 * SECOND_NS
    clock.advance(ns=5 * SECOND_NS - 1)
    assert await repo.claim(10, LEASE_NS) == []
    clock.advance(ns=1)
    again = await claim_one(repo)
    assert again.message.id == "m1"
    assert again.message.delivery_attempts == 2
    assert again.message.last_error == "model timed out"


async def test_release_with_reason_on_the_last_attempt_makes_it_dead(repo, clock):
    await create(repo, "flaky", id="m1")
    for attempt in range(1, repo.max_attempts + 1):
        delivery = await claim_one(repo)
        released = await repo.release(
            "m1", delivery.lease_token, reason=f"failure {attempt}", retry_after_ns=0
        )
        clock.advance(ns=1)

    assert released.state is State.DEAD
    assert released.last_error == "failure 3"
    assert (await repo.get_message("m1")).state is State.DEAD
    assert await repo.claim(10, LEASE_NS) == []


async def test_release_without_reason_gives_the_attempt_back(repo, clock):
    await create(repo, "not started", id="m1")
    for _ in range(repo.max_attempts + 2):
        delivery = await claim_one(repo)
        assert delivery.message.delivery_attempts == 1
        released = await repo.release("m1", delivery.lease_token, reason="", retry_after_ns=0)
        assert released.state is State.PENDING
        assert released.delivery_attempts == 0
        assert released.last_error is None


async def test_release_without_reason_respects_retry_after(repo, clock):
    await create(repo, "not started", id="m1")
    delivery = await claim_one(repo)
    await repo.release("m1", delivery.lease_token, reason="", retry_after_ns=SECOND_NS)
    assert await repo.claim(10, LEASE_NS) == []
    clock.advance(1)
    assert (await claim_one(repo)).message.id == "m1"


async def test_release_with_a_wrong_token_fails_and_changes_nothing(repo):
    await create(repo, "work", id="m1")
    delivery = await claim_one(repo)
    before = await repo.get_message("m1")

    with pytest.raises(FailedPrecondition) as caught:
        await repo.release("m1", "not-the-token", reason="x", retry_after_ns=0)

    assert "m1" in str(caught.value)
    assert await repo.get_message("m1") == before
    await repo.release("m1", delivery.lease_token, reason="", retry_after_ns=0)
    with pytest.raises(FailedPrecondition):  # settled: the token is no lease any more
        await repo.release("m1", delivery.lease_token, reason="", retry_after_ns=0)
    with pytest.raises(NotFound):
        await repo.release("ghost", delivery.lease_token, reason="", retry_after_ns=0)


async def test_release_leases_returns_messages_at_once_and_keeps_attempts(repo, clock):
    for name in ("a", "b", "c", "d"):
        await create(repo, name, id=name)
    deliveries = await repo.claim(3, SECOND_NS)
    old = {d.message.id: d.lease_token for d in deliveries}
    clock.advance(ns=SECOND_NS)
    # "a" lapsed and went to another stream; "b" lapsed but nobody took it; "c" was processed.
    reclaimed = await repo.claim(1, LEASE_NS)
    assert [d.message.id for d in reclaimed] == ["a"]
    await repo.mark_processed("c", None)
    clock.advance(ns=1)

    released = await repo.release_leases(
        [Lease("a", old["a"]), Lease("b", old["b"]), Lease("c", old["c"]), Lease("zz", "t")]
    )

    # Only "b": its token is still the current one.
    assert [(r.message_id, r.state) for r in released] == [("b", State.PENDING)]
    a = await repo.get_message("a")
    assert a.state is State.LEASED
    assert a.delivery_attempts == 2
    b = await repo.get_message("b")
    assert b.state is State.PENDING
    assert b.delivery_attempts == 1
    assert (await repo.get_message("c")).state is State.PROCESSED
    assert len(await repo.release_leases([Lease("a", reclaimed[0].lease_token)])) == 1
    a = await repo.get_message("a")
    assert a.state is State.PENDING
    assert a.delivery_attempts == 2
    assert a.last_error is None
    assert await repo.next_visible_ns() is None  # visible at once, no waiting for expiry
    assert [d.message.id for d in await repo.claim(10, LEASE_NS)] == ["a", "b", "d"]


async def test_release_leases_of_nothing(repo):
    assert await repo.release_leases([]) == []


async def test_release_leases_dead_letters_at_max_attempts(repo, clock):
    await create(repo, "crashes the bot", id="m1")
    for _ in range(repo.max_attempts - 1):
        delivery = await claim_one(repo)
        [released] = await repo.release_leases([Lease("m1", delivery.lease_token)])
        assert released.state is State.PENDING
        assert (await repo.get_message("m1")).state is State.PENDING
    delivery = await claim_one(repo)
    assert delivery.message.delivery_attempts == repo.max_attempts

    [released] = await repo.release_leases([Lease("m1", delivery.lease_token)])
    assert released.state is State.DEAD

    dead = await repo.get_message("m1")
    assert dead.state is State.DEAD
    assert dead.last_error == "delivered 3 times without being processed"
    assert await repo.claim(10, LEASE_NS) == []


# -- extend_lease -----------------------------------------------------------------------------


async def test_extend_lease_pushes_the_expiry(repo, clock):
    await create(repo, "long job", id="m1")
    delivery = await claim_one(repo)
    clock.advance(ns=LEASE_NS - 1)

    extended = await repo.extend_lease("m1", delivery.lease_token, LEASE_NS)

    assert extended.state is State.LEASED
    assert extended.lease_expire_ns == clock.now_ns + LEASE_NS
    clock.advance(ns=LEASE_NS - 1)
    assert await repo.claim(10, LEASE_NS) == []
    assert (await repo.get_message("m1")).lease_expire_ns == extended.lease_expire_ns
    clock.advance(ns=1)
    assert (await claim_one(repo)).message.delivery_attempts == 2


async def test_extend_lease_with_a_wrong_or_expired_token_fails(repo, clock):
    await create(repo, "long job", id="m1")
    delivery = await claim_one(repo)

    with pytest.raises(FailedPrecondition):
        await repo.extend_lease("m1", "wrong", LEASE_NS)
    clock.advance(ns=LEASE_NS)
    with pytest.raises(FailedPrecondition) as caught:
        await repo.extend_lease("m1", delivery.lease_token, LEASE_NS)
    assert "expired" in str(caught.value)
    with pytest.raises(NotFound):
        await repo.extend_lease("ghost", delivery.lease_token, LEASE_NS)
    new = await claim_one(repo)
    with pytest.raises(FailedPrecondition):
        await repo.extend_lease("m1", delivery.lease_token, LEASE_NS)
    await repo.mark_processed("m1", None)
    with pytest.raises(FailedPrecondition):
        await repo.extend_lease("m1", new.lease_token, LEASE_NS)


# -- requeue ----------------------------------------------------------------------------------


async def test_requeue_brings_a_dead_message_back_with_fresh_attempts(repo, clock):
    await create(repo, "poison", id="m1")
    for _ in range(repo.max_attempts):
        delivery = await claim_one(repo)
        await repo.release("m1", delivery.lease_token, reason="boom", retry_after_ns=0)
    assert (await repo.get_message("m1")).state is State.DEAD

    requeued = await repo.requeue("m1")

    assert requeued.state is State.PENDING
    assert requeued.delivery_attempts == 0
    assert requeued.last_error == "boom"  # kept for the operator
    again = await claim_one(repo)
    assert again.message.id == "m1"
    assert again.message.delivery_attempts == 1


async def test_requeue_of_a_message_that_is_not_dead_fails(repo):
    await create(repo, "leased", id="l")
    await create(repo, "pending", id="p")
    await create(repo, "processed", id="x")
    await repo.mark_processed("x", None)
    await claim_one(repo)  # "l"

    for message_id in ("p", "l", "x"):
        before = await repo.get_message(message_id)
        with pytest.raises(FailedPrecondition) as caught:
            await repo.requeue(message_id)
        assert message_id in str(caught.value)
        assert await repo.get_message(message_id) == before
    with pytest.raises(NotFound):
        await repo.requeue("ghost")


# -- next_visible_ns / release_all_leases -----------------------------------------------------


async def test_next_visible_ns_is_the_earliest_future_visibility(repo, clock):
    assert await repo.next_visible_ns() is None
    await create(repo, "a", id="a")
    await create(repo, "b", id="b")
    await create(repo, "c", id="c")
    assert await repo.next_visible_ns() is None  # all deliverable now

    start = clock.now_ns
    _, b = await repo.claim(2, LEASE_NS)
    assert await repo.next_visible_ns() == start + LEASE_NS
    await repo.release("b", b.lease_token, reason="later", retry_after_ns=3 * SECOND_NS)
    assert await repo.next_visible_ns() == start + 3 * SECOND_NS
    await repo.mark_processed("b", None)
    assert await repo.next_visible_ns() == start + LEASE_NS
    clock.advance(ns=LEASE_NS)
    assert await repo.next_visible_ns() is None


async def test_release_all_leases_returns_every_lease(repo, clock):
    for name in ("a", "b", "c"):
        await create(repo, name, id=name)
    deliveries = await repo.claim(2, LEASE_NS)

    assert await repo.release_all_leases() == 2

    for delivery in deliveries:
        message = await repo.get_message(delivery.message.id)
        assert message.state is State.PENDING
        assert message.delivery_attempts == 1
        with pytest.raises(FailedPrecondition):
            await repo.extend_lease(delivery.message.id, delivery.lease_token, LEASE_NS)
    assert [d.message.id for d in await repo.claim(10, LEASE_NS)] == ["a", "b", "c"]
    assert await repo.release_all_leases() == 3
    assert await repo.release_all_leases() == 0


# -- the database itself ----------------------------------------------------------------------


async def test_the_database_allows_one_reply_per_message(repo, clock):
    from sqlalchemy.exc import IntegrityError

    await create(repo, "question", id="q1")
    marked = await repo.mark_processed("q1", NewMessage(author="bot", text="answer"))

    with pytest.raises(IntegrityError):
        async with repo._database.engine.begin() as connection:
            await connection.execute(
                insert(MessageRow).values(
                    id="second-reply",
                    sequence=marked.reply.sequence + 1000,
                    author="bot",
                    text="a second answer",
                    receive_time_ns=clock.now_ns,
                    state=State.PROCESSED.value,
                    reply_to="q1",
                    delivery_attempts=0,
                    visible_at_ns=0,
                )
            )

    assert await count_rows(repo, MessageRow.reply_to == "q1") == 1


async def test_create_schema_twice_is_harmless(repo):
    await create(repo, "kept", id="m1")
    await upgrade_to_head(repo.database)
    assert (await repo.get_message("m1")).text == "kept"


async def test_an_unusable_sqlite_database_is_storage_unavailable(tmp_path):
    # A file that is not a database, rather than a path that cannot be opened: aiosqlite's
    # worker thread outlives a failed connect and later reports into a closed event loop,
    # which would surface as an error in whichever test runs next.
    (tmp_path / "t.db").write_bytes(b"this is not an SQLite database" * 100)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    repository = MessageRepository(Database(engine))
    try:
        with pytest.raises(StorageUnavailable):
            await upgrade_to_head(repository.database)
    finally:
        await repository.dispose()


async def test_a_database_of_the_old_layout_is_refused_with_what_to_do(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    async with engine.begin() as connection:
        await connection.exec_driver_sql(
            "CREATE TABLE messages (id VARCHAR(128) PRIMARY KEY, sequence BIGINT UNIQUE)"
        )
    repository = MessageRepository(Database(engine))
    try:
        with pytest.raises(StorageUnavailable, match="older ackbot"):
            await upgrade_to_head(repository.database)
    finally:
        await repository.dispose()


async def test_create_messages_answers_each_item_in_order(repo):
    await create(repo, "stored", id="old")
    news = [
        NewMessage(author="alice", text="one", id="b1"),
        NewMessage(author="alice", text="stored", id="old"),
        NewMessage(author="bob", text="taken", id="old"),
        NewMessage(author="alice", text="no id"),
        NewMessage(author="alice", text="one", id="b1"),
    ]
    # A unary create of the same id racing the batch: one of them creates, the other finds it.
    unary, outcomes = await asyncio.gather(
        repo.create_message(NewMessage(author="alice", text="one", id="b1")),
        repo.create_messages(news),
    )
    assert isinstance(outcomes[2], AlreadyExists)
    results = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(results) == 4
    assert [r.already_existed for r in results[1:]] == [True, False, True]
    assert results[0].message.sequence == unary.message.sequence
    assert results[0].already_existed != unary.already_existed
    assert results[2].message.id
    assert await count_rows(repo) == 3
