"""Threads and comments as the public API shows them, from the store's conversations and
messages: written once for ListThread, WatchThread and the hub."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from ackbot.v1 import message_store_pb2 as pb
from ackbot.web.v1 import comments_pb2 as web

# A thread's store conversation is this prefix + the thread: a caller of the public API reaches
# only the conversations the front door made, never another producer's.
CONVERSATION_PREFIX = "web:"
MAX_THREAD_CHARS = 120
# A comment posted with a request_id is stored under this prefix + it (the store's id rule
# allows the dot), so that a retried PostComment finds it stored.
REQUEST_ID_PREFIX = "web."
_THREAD = re.compile(rf"[A-Za-z0-9._:~-]{{1,{MAX_THREAD_CHARS}}}")

_STATES = {
    pb.MESSAGE_STATE_PENDING: web.COMMENT_STATE_WAITING,
    pb.MESSAGE_STATE_LEASED: web.COMMENT_STATE_ANSWERING,
    pb.MESSAGE_STATE_PROCESSED: web.COMMENT_STATE_ANSWERED,
    pb.MESSAGE_STATE_DEAD: web.COMMENT_STATE_UNANSWERED,
    pb.MESSAGE_STATE_HELD: web.COMMENT_STATE_HELD,
}


def checked_thread(thread: str) -> str:
    """The thread, or INVALID_ARGUMENT naming the field and the rule."""
    if not _THREAD.fullmatch(thread):
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"thread must be 1 to {MAX_THREAD_CHARS} characters of [A-Za-z0-9._:~-]",
        )
    return thread


def conversation_of(thread: str) -> str:
    return CONVERSATION_PREFIX + thread


def thread_of(message: pb.Message) -> str | None:
    """The thread of a stored message, or None when it is not one of the front door's."""
    conversation = message.conversation_id
    if not conversation.startswith(CONVERSATION_PREFIX):
        return None
    return conversation[len(CONVERSATION_PREFIX) :]


def comment(message: pb.Message, reply: pb.Message | None = None) -> web.Comment:
    """The public view of a stored message (and of its reply): no lease, attempts or errors."""
    shown = web.Comment(
        id=message.id,
        thread=thread_of(message) or "",
        author=message.author,
        text=message.text,
        sequence=message.sequence,
        from_bot=bool(message.reply_to),
        state=web.COMMENT_STATE_ANSWERED
        if message.reply_to or reply is not None
        else _STATES.get(message.state, web.COMMENT_STATE_WAITING),
    )
    shown.create_time.CopyFrom(message.receive_time)
    if reply is not None:
        shown.reply.CopyFrom(comment(reply))
    return shown


def deleted(message: pb.Message) -> web.Comment:
    """What readers are told of a deleted message (its tombstone): which one to take away."""
    return web.Comment(
        id=message.id,
        thread=thread_of(message) or "",
        sequence=message.sequence,
        from_bot=bool(message.reply_to),
        state=web.COMMENT_STATE_DELETED,
    )


def is_public(message: pb.Message) -> bool:
    """Shown to every reader: not HELD for moderation (its author alone sees it) nor deleted."""
    return message.state not in (pb.MESSAGE_STATE_HELD, pb.MESSAGE_STATE_DELETED)


def comments(
    messages: Iterable[pb.Message], replies: Mapping[str, pb.Message]
) -> list[web.Comment]:
    """The public originals among `messages` in their order, each with its reply from `replies`
    (by the original's id) when there is one."""
    return [
        comment(message, replies.get(message.id))
        for message in messages
        if not message.reply_to and is_public(message)
    ]
