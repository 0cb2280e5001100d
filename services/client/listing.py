"""Walking ListMessages pages, written once for the sync CLI (`ackbot list`, where `ackbot tail`
starts) and the async client (`Client.list`, where `Client.follow` starts).

`PageWalk` holds the paging rules (page sizes under a limit, page tokens, where the list ends)
and makes no call itself, so the caller makes each one, blocking or awaited:

    walk = PageWalk(state=...)
    while walk.request is not None:
        response = stub.ListMessages(walk.request)
        walk.advance(response)
"""

from __future__ import annotations

from typing import TypedDict, Unpack

from ackbot.common.limits import MAX_PAGE_SIZE
from ackbot.v1 import message_store_pb2 as pb

# The request that finds where the list ends now, however long it is: one row, newest first.
LAST_MESSAGE_REQUEST = pb.ListMessagesRequest(page_size=1, order_by="sequence desc")


class ListFilters(TypedDict, total=False):
    """What a listing asks for; each is ListMessagesRequest's field of that name, except
    `limit` (stop after so many messages), `newest_first` (order_by "sequence desc") and
    `page_size` (default and at most 1000)."""

    state: pb.MessageState
    reply_to: str
    conversation_id: str
    after_sequence: int
    limit: int | None
    newest_first: bool
    page_size: int


class PageWalk:
    """The ListMessages requests of one listing: `request` is the next one to make (None once
    the last page, or `limit` messages, came back); `advance` takes its response."""

    def __init__(self, **filters: Unpack[ListFilters]) -> None:
        self._page_size = min(filters.get("page_size", MAX_PAGE_SIZE), MAX_PAGE_SIZE)
        self._remaining = filters.get("limit")
        self._template = pb.ListMessagesRequest(
            state=filters.get("state", pb.MESSAGE_STATE_UNSPECIFIED),
            reply_to=filters.get("reply_to", ""),
            conversation_id=filters.get("conversation_id", ""),
            after_sequence=filters.get("after_sequence", 0),
            order_by="sequence desc" if filters.get("newest_first") else "",
        )
        self.request: pb.ListMessagesRequest | None = self._next("")

    def advance(self, response: pb.ListMessagesResponse) -> None:
        if self._remaining is not None:
            self._remaining -= len(response.messages)
        self.request = self._next(response.next_page_token) if response.next_page_token else None

    def _next(self, token: str) -> pb.ListMessagesRequest | None:
        remaining = self._remaining
        if remaining is not None and remaining <= 0:
            return None
        request = pb.ListMessagesRequest()
        request.CopyFrom(self._template)
        request.page_token = token
        request.page_size = (
            self._page_size if remaining is None else min(remaining, self._page_size)
        )
        return request
