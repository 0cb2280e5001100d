"""Deleting (tombstones) and holding for moderation, in the repository over a real database:
SQLite, and PostgreSQL when ACKBOT_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import pytest

from ackbot.store.errors import (
    DeletedIdTaken,
    MessageDeleted,
    MessageHeld,
    NotFound,
    NotHeld,
)
from ackbot.store.models import State
from ackbot.store.repository import MessageRepository
from ackbot.store.tables.transaction import MESSAGES
from ackbot.store.types import Cause, Changes, NewMessage

from .conftest import SECOND_NS

LEASE_NS = 10 * SECOND_NS


def recorded(repo: MessageRepository) -> list[Changes]:
    seen: list[Changes] = []
    repo.report_changes_to(seen.append)
    return seen


async def test_delete_leaves_a_tombstone_of_the_message_and_its_reply(repo):
    await repo.create_message(NewMessage(author="ana", text="hi", id="m1", conversation_id="c"))
    delivery = (await repo.claim(1, LEASE_NS))[0]
    marked = await repo.mark_processed("m1", NewMessage(author="bot", text="hello"))
    reply_id = marked.reply.id
    changes = recorded(repo)

    result = await repo.delete("m1")

    assert (result.already_deleted, result.deleted_count) == (False, 2)
    tomb = result.message
    assert (tomb.id, tomb.state, tomb.author, tomb.text) == ("m1", State.DELETED, "", "")
    assert (tomb.sequence, tomb.conversation_id) == (delivery.message.sequence, "c")
    assert [(c.message_id, c.cause) for c in changes[0].messages] == [
        ("m1", Cause.DELETED),
        (reply_id, Cause.DELETED),
    ]
    for message_id in ("m1", reply_id):
        with pytest.raises(MessageDeleted):
            await repo.get_message(message_id)
    assert await repo.list_messages() == []
    listed = await repo.list_messages(state=State.DELETED)
    assert [(m.id, m.author, m.text) for m in listed] == [("m1", "", ""), (reply_id, "", "")]


async def test_a_second_delete_changes_nothing_and_says_so(repo):
    await repo.create_message(NewMessage(author="ana", text="hi", id="m1"))
    await repo.delete("m1")

    again = await repo.delete("m1")

    assert (again.already_deleted, again.deleted_count, again.message.state) == (
        True,
        0,
        State.DELETED,
    )
    with pytest.raises(NotFound) as unknown:
        await repo.delete("nope")
    assert not isinstance(unknown.value, MessageDeleted)


async def test_deleting_a_reply_deletes_only_the_reply(repo):
    await repo.create_message(NewMessage(author="ana", text="hi", id="m1"))
    marked = await repo.mark_processed("m1", NewMessage(author="bot", text="hello"))

    result = await repo.delete(marked.reply.id)

    assert result.deleted_count == 1
    original = await repo.get_message("m1")
    assert (original.state, original.reply_id) == (State.PROCESSED, None)


async def test_a_create_with_a_deleted_id_is_refused_whatever_its_content(repo):
    new = NewMessage(author="ana", text="hi", id="m1")
    await repo.create_message(new)
    await repo.delete("m1")

    with pytest.raises(DeletedIdTaken) as retried:
        await repo.create_message(new)
    assert retried.value.reason == "MESSAGE_DELETED"
    outcomes = await repo.create_messages([new, NewMessage(author="bo", text="x", id="m2")])
    assert isinstance(outcomes[0], DeletedIdTaken)
    assert not outcomes[1].already_existed


async def test_a_deleted_leased_message_is_settled_and_never_answered(repo):
    await repo.create_message(NewMessage(author="ana", text="hi", id="m1"))
    delivery = (await repo.claim(1, LEASE_NS))[0]
    changes = recorded(repo)

    await repo.delete("m1")

    assert changes[0].messages[0].lease_token == delivery.lease_token
    with pytest.raises(MessageDeleted):
        await repo.mark_processed("m1", NewMessage(author="bot", text="late"), delivery.lease_token)
    with pytest.raises(MessageDeleted):
        await repo.release("m1", delivery.lease_token, reason="failed", retry_after_ns=0)
    with pytest.raises(MessageDeleted):
        await repo.extend_lease("m1", delivery.lease_token, LEASE_NS)
    assert await repo.list_messages(reply_to="m1") == []
    assert await repo.claim(5, LEASE_NS) == []


async def test_a_deleted_message_holds_nothing_back_in_its_conversation(repo):
    await repo.create_message(NewMessage(author="ana", text="1", id="m1", conversation_id="c"))
    await repo.create_message(NewMessage(author="ana", text="2", id="m2", conversation_id="c"))
    await repo.claim(1, LEASE_NS)
    assert await repo.claim(1, LEASE_NS) == []  # m2 waits for m1
    changes = recorded(repo)

    await repo.delete("m1")

    assert changes[0].made_work
    assert [d.message.id for d in await repo.claim(5, LEASE_NS)] == ["m2"]


async def test_tombstone_where_takes_one_batch_with_the_replies(repo):
    for i in range(5):
        await repo.create_message(NewMessage(author="ana", text=str(i), id=f"a{i}"))
    await repo.create_message(NewMessage(author="bo", text="x", id="b0"))
    await repo.mark_processed("a0", NewMessage(author="bot", text="re"))
    table = repo._messages

    first = await repo.run_write(
        lambda tx: [table.tombstone_where(tx, MESSAGES.c.author == "ana", limit=2)]
    )
    rest = await repo.run_write(
        lambda tx: [table.tombstone_where(tx, MESSAGES.c.author == "ana", limit=100)]
    )

    assert [m.id for m in first[0]][:2] == ["a0", "a1"]
    assert len(first[0]) == 3  # a0's reply too
    assert [m.id for m in rest[0]] == ["a2", "a3", "a4"]
    assert [m.id for m in await repo.list_messages()] == ["b0"]


async def test_held_messages_are_never_claimed_until_approved(repo):
    await repo.create_message(NewMessage(author="ana", text="1", id="h1", hold=True))
    await repo.create_message(NewMessage(author="ana", text="2", id="p1", hold=False))

    assert [d.message.id for d in await repo.claim(5, LEASE_NS)] == ["p1"]
    with pytest.raises(MessageHeld):
        await repo.mark_processed("h1", NewMessage(author="bot", text="re"))
    changes = recorded(repo)
    approved = await repo.approve("h1")

    assert approved.state is State.PENDING
    assert changes[0].made_work
    assert [d.message.id for d in await repo.claim(5, LEASE_NS)] == ["h1"]
    with pytest.raises(NotHeld):
        await repo.approve("h1")
    await repo.delete("h1")
    with pytest.raises(MessageDeleted):
        await repo.approve("h1")


async def test_a_held_message_neither_holds_back_nor_fences_its_conversation(repo):
    await repo.create_message(
        NewMessage(author="ana", text="0", id="h0", conversation_id="c", hold=True)
    )
    await repo.create_message(NewMessage(author="ana", text="1", id="m1", conversation_id="c"))
    first = (await repo.claim(5, LEASE_NS))[0]
    assert first.message.id == "m1"  # h0, earlier but held, holds nothing back
    await repo.create_message(
        NewMessage(author="ana", text="2", id="h2", conversation_id="c", hold=True)
    )

    # Written from the conversation as of m1: h2 came later, but held, it does not fence.
    result = await repo.mark_processed(
        "m1", NewMessage(author="bot", text="re"), context_sequence=first.message.sequence
    )

    assert not result.already_processed
    assert result.reply is not None
