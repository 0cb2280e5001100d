"""The public API's handlers (ackbot.web.v1.CommentService): check, one call to the store through
ackbot.client, map. Nothing else of the store is reachable from here."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from ackbot.client import (
    AlreadyExists,
    Client,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StoreError,
    Unauthenticated,
    Unavailable,
    new_id,
)
from ackbot.common.limits import first_forbidden_char, utf8_size
from ackbot.v1 import message_store_pb2 as pb
from ackbot.web import comments
from ackbot.web.config import WebConfig
from ackbot.web.editkeys import EditKeys, edited_id
from ackbot.web.guard import (
    RateLimiter,
    WatchCounter,
    client_address,
    seconds_text,
    token_matches,
)
from ackbot.web.hub import Hub
from ackbot.web.metrics import WebMetrics
from ackbot.web.v1 import comments_pb2 as web

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Most messages a WatchThread reads to catch up from `after_sequence`; a reader further behind
# lists the thread again.
MAX_CATCH_UP = 1000
# An empty response this often on a quiet watch: reverse proxies end idle streams (nginx's
# proxy_read_timeout is 60 s by default).
KEEPALIVE_SECONDS = 25.0
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
LAST_MESSAGE = pb.ListMessagesRequest(page_size=1, order_by="sequence desc")
# Most own comments one ListThread looks up (each is a GetMessage).
MAX_OWN_COMMENTS = 50

T = TypeVar("T")


class CommentService:
    def __init__(
        self,
        client: Client,
        hub: Hub,
        config: WebConfig,
        metrics: WebMetrics,
        *,
        keys: EditKeys,
        deleter: Client | None = None,
    ) -> None:
        """`deleter` is the client with the store's admin role that DeleteMessage needs
        (--store-admin-token-file); None: `client`, for a store that checks no roles or whose
        producer token is admin."""
        self._client = client
        self._deleter = deleter or client
        self._keys = keys
        self._hub = hub
        self._config = config
        self._metrics = metrics
        self._posts = RateLimiter(config.posts_per_minute)
        self._watches = WatchCounter(config.watches_per_address)
        self.limits = web.Limits(
            max_text_bytes=config.max_text_bytes,
            max_author_chars=config.max_author_chars,
            posts_per_minute=config.posts_per_minute,
            edit_window_seconds=config.edit_window_seconds,
        )

    # -- the calls ------------------------------------------------------------------------------

    async def post_comment(
        self, request: web.PostCommentRequest, ctx: RequestContext[Any, Any]
    ) -> web.PostCommentResponse:
        async def handle() -> web.PostCommentResponse:
            thread = comments.checked_thread(request.thread)
            author, text = request.author.strip(), request.text
            self._check_author(author)
            self._check_text(text)
            from_site = self._from_site(ctx)
            if not from_site:
                self._take_post(ctx)
            message_id = ""
            if request.request_id:
                if not REQUEST_ID.fullmatch(request.request_id):
                    raise ConnectError(
                        Code.INVALID_ARGUMENT,
                        "request_id must be 16 to 64 characters of [A-Za-z0-9_-]",
                    )
                message_id = comments.REQUEST_ID_PREFIX + request.request_id
            try:
                created = await self._create(thread, author, text, message_id, from_site)
            except AlreadyExists:
                raise ConnectError(
                    Code.ALREADY_EXISTS, "request_id was used for another comment"
                ) from None
            log.info("message_id=%s posted to thread %s", created.id, thread)
            response = web.PostCommentResponse(comment=comments.comment(created))
            if self._config.edit_window_seconds > 0:
                expires = int(time.time()) + self._config.edit_window_seconds
                response.edit_key = self._keys.make(created.id, expires)
                response.edit_expire_time.FromSeconds(expires)
            return response

        return await self._measured("PostComment", handle)

    async def list_thread(
        self, request: web.ListThreadRequest, ctx: RequestContext[Any, Any]
    ) -> web.ListThreadResponse:
        async def handle() -> web.ListThreadResponse:
            thread = comments.checked_thread(request.thread)
            if not 0 <= request.page_size <= MAX_PAGE_SIZE:
                raise ConnectError(Code.INVALID_ARGUMENT, f"page_size must be 0 to {MAX_PAGE_SIZE}")
            last = await self._list(LAST_MESSAGE)
            page = await self._list(
                pb.ListMessagesRequest(
                    conversation_id=comments.conversation_of(thread),
                    order_by="sequence desc",
                    page_size=request.page_size or DEFAULT_PAGE_SIZE,
                    page_token=request.page_token,
                )
            )
            messages = list(reversed(page.messages))
            shown = await self._with_replies(messages)
            held = [] if request.page_token else await self._own_held(thread, request.own_comments)
            return web.ListThreadResponse(
                comments=shown,
                next_page_token=page.next_page_token,
                last_sequence=last.messages[0].sequence if last.messages else 0,
                limits=self.limits,
                held_comments=held,
            )

        return await self._measured("ListThread", handle)

    async def watch_thread(
        self, request: web.WatchThreadRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[web.WatchThreadResponse]:
        thread = comments.checked_thread(request.thread)
        if request.after_sequence < 0:
            raise ConnectError(Code.INVALID_ARGUMENT, "after_sequence must not be negative")
        address = self._address(ctx)
        if not self._watches.enter(address):
            self._metrics.rate_limited.labels("watches").inc()
            self._metrics.requests.labels("WatchThread", Code.RESOURCE_EXHAUSTED.value).inc()
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"too many open watches from your address: at most {self._watches.limit}",
            )
        viewer = self._hub.subscribe(thread)
        code = "ok"
        try:
            # Subscribed: say so at once (a browser's fetch resolves with the first bytes).
            yield web.WatchThreadResponse()
            if request.after_sequence > 0:
                for shown in await self._catch_up(thread, request.after_sequence):
                    yield web.WatchThreadResponse(comment=shown)
            while True:
                try:
                    item = await asyncio.wait_for(viewer.queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield web.WatchThreadResponse()  # proxies cut streams that stay silent
                    continue
                if item is None:
                    break
                yield web.WatchThreadResponse(comment=item)
            if viewer.fell_behind:
                code = Code.RESOURCE_EXHAUSTED.value
                raise ConnectError(
                    Code.RESOURCE_EXHAUSTED, "you fell behind the thread: list it and watch again"
                )
            code = Code.UNAVAILABLE.value
            raise ConnectError(Code.UNAVAILABLE, "the comments are restarting: watch again")
        except ConnectError as exc:
            code = exc.code.value
            raise
        except asyncio.CancelledError:
            code = "canceled"
            raise
        finally:
            self._hub.unsubscribe(viewer)
            self._watches.leave(address)
            self._metrics.requests.labels("WatchThread", code).inc()

    async def delete_comment(
        self, request: web.DeleteCommentRequest, ctx: RequestContext[Any, Any]
    ) -> web.DeleteCommentResponse:
        async def handle() -> web.DeleteCommentResponse:
            self._check_key(request.id, request.edit_key)
            already = await self._delete(request.id)
            return web.DeleteCommentResponse(already_deleted=already)

        return await self._measured("DeleteComment", handle)

    async def edit_comment(
        self, request: web.EditCommentRequest, ctx: RequestContext[Any, Any]
    ) -> web.EditCommentResponse:
        """The old comment deleted and the new text posted as a new comment (the store's
        messages never change, and the bot must answer what is written now). The new one is
        stored first, under an id derived from the old one: a retry after a failure half-way
        stores it once and then deletes the old, and nothing is lost in between."""

        async def handle() -> web.EditCommentResponse:
            expires = self._check_key(request.id, request.edit_key)
            self._check_text(request.text)
            from_site = self._from_site(ctx)
            if not from_site:
                self._take_post(ctx)
            new_id = edited_id(request.id)
            try:
                old = await _store(self._client.get(request.id))
            except NotFound as exc:
                if exc.reason != "MESSAGE_DELETED":
                    raise ConnectError(Code.NOT_FOUND, "there is no such comment") from None
                old = None  # deleted: by this edit's first try, when its new comment is stored
            if old is not None and (old.reply_to or comments.thread_of(old) is None):
                raise ConnectError(Code.NOT_FOUND, "there is no such comment")
            if old is None:
                try:
                    created = await _store(self._client.get(new_id))
                except NotFound:
                    raise ConnectError(Code.NOT_FOUND, "the comment was deleted") from None
                if created.text != request.text:
                    raise ConnectError(Code.NOT_FOUND, "the comment was deleted")
            else:
                thread = comments.thread_of(old) or ""
                try:
                    created = await self._create(
                        thread, old.author, request.text, new_id, from_site
                    )
                except AlreadyExists:
                    raise ConnectError(
                        Code.ALREADY_EXISTS, "the comment was already edited to another text"
                    ) from None
                await self._delete(request.id)
            log.info("message_id=%s edited into message_id=%s", request.id, created.id)
            response = web.EditCommentResponse(
                comment=comments.comment(created), edit_key=self._keys.make(created.id, expires)
            )
            response.edit_expire_time.FromSeconds(expires)
            return response

        return await self._measured("EditComment", handle)

    # -- parts ----------------------------------------------------------------------------------

    def _from_site(self, ctx: RequestContext[Any, Any]) -> bool:
        """A call from the site's own backend (its token): no per-address limits, no hold."""
        return token_matches(ctx.request_headers.get("authorization"), self._config.site_token)

    def _take_post(self, ctx: RequestContext[Any, Any]) -> None:
        wait = self._posts.take(self._address(ctx))
        if wait > 0:
            self._metrics.rate_limited.labels("posts").inc()
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"too many comments from your address: at most "
                f"{self._config.posts_per_minute} a minute; try again in "
                f"{seconds_text(wait)}",
            )

    async def _create(
        self, thread: str, author: str, text: str, message_id: str, from_site: bool
    ) -> pb.Message:
        request = pb.CreateMessageRequest(
            message=pb.Message(
                id=message_id or new_id(),
                author=author,
                text=text,
                conversation_id=comments.conversation_of(thread),
            )
        )
        if self._config.hold_comments:
            # The site's backend vouches for what it posts; readers' comments wait.
            request.hold = not from_site
        created = await _store(self._client.send_create(request))
        return created.message

    def _check_key(self, comment_id: str, key: str) -> int:
        """The window's end when `key` proves `comment_id` is the caller's and the window
        lasts; else the refusal."""
        if not comment_id:
            raise ConnectError(Code.INVALID_ARGUMENT, "id is required")
        if self._config.edit_window_seconds == 0:
            # Turned off: keys made before still verify, and must not work.
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                "deleting and editing comments is not enabled on this site",
            )
        if not key:
            raise ConnectError(Code.PERMISSION_DENIED, "edit_key is required")
        expires = self._keys.check(comment_id, key)
        if expires is None:
            self._metrics.edit_keys_refused.inc()
            raise ConnectError(Code.PERMISSION_DENIED, "edit_key is not this comment's")
        if time.time() >= expires:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"too late: a comment may be deleted or edited for "
                f"{seconds_text(self._config.edit_window_seconds)} after it is posted",
            )
        return expires

    async def _delete(self, comment_id: str) -> bool:
        """DeleteMessage (the comment and the bot's reply); True when it was deleted already."""
        request = pb.DeleteMessageRequest(id=comment_id)
        try:
            response = await self._deleter.call(
                "DeleteMessage",
                lambda timeout: self._deleter.stub.DeleteMessage(request, timeout=timeout),
                message_id=comment_id,
            )
        except NotFound:
            raise ConnectError(Code.NOT_FOUND, "there is no such comment") from None
        except (PermissionDenied, Unauthenticated) as exc:
            log.error(
                "message_id=%s: the store refused to delete it (%s): give the front door an "
                "admin token (--store-admin-token-file) for commenters to delete their comments",
                comment_id,
                exc,
            )
            raise ConnectError(
                Code.FAILED_PRECONDITION, "deleting comments is not enabled on this site"
            ) from None
        except StoreError as exc:
            raise _public(exc) from None
        log.info("message_id=%s deleted by its writer", comment_id)
        return response.already_deleted

    async def _own_held(self, thread: str, own: Sequence[web.CommentKey]) -> list[web.Comment]:
        """The caller's own comments still HELD for moderation, among `own` (checked keys;
        the window does not matter: a comment may wait for a moderator longer)."""
        if len(own) > MAX_OWN_COMMENTS:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"own_comments must hold at most {MAX_OWN_COMMENTS}"
            )
        ids = [item.id for item in own if self._keys.check(item.id, item.edit_key) is not None]
        found = await asyncio.gather(*(self._get_or_none(i) for i in ids))
        held = [
            m
            for m in found
            if m is not None
            and m.state == pb.MESSAGE_STATE_HELD
            and comments.thread_of(m) == thread
        ]
        held.sort(key=lambda m: m.sequence)
        return [comments.comment(m) for m in held]

    async def _get_or_none(self, message_id: str) -> pb.Message | None:
        """A message, or None when it is gone (deleted, or removed for good)."""
        try:
            return await _store(self._client.get(message_id))
        except NotFound:
            return None

    def _address(self, ctx: RequestContext[Any, Any]) -> str:
        return client_address(
            ctx.client_address,
            ctx.request_headers.get("x-forwarded-for"),
            self._config.trusted_proxies,
        )

    def _check_author(self, author: str) -> None:
        limit = self._config.max_author_chars
        if not 1 <= len(author) <= limit:
            raise ConnectError(Code.INVALID_ARGUMENT, f"author must be 1 to {limit} characters")
        if first_forbidden_char(author, allow_newlines=False) is not None:
            raise ConnectError(Code.INVALID_ARGUMENT, "author must not hold control characters")

    def _check_text(self, text: str) -> None:
        limit = self._config.max_text_bytes
        size = utf8_size(text)
        if not text.strip():
            raise ConnectError(Code.INVALID_ARGUMENT, "text must not be empty")
        if size > limit:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"text is {size} bytes; the limit is {limit} bytes of UTF-8",
            )
        if first_forbidden_char(text, allow_newlines=True) is not None:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                "text must not hold control characters other than tab and line breaks",
            )

    async def _list(self, request: pb.ListMessagesRequest) -> pb.ListMessagesResponse:
        return await _store(
            self._client.call(
                "ListMessages",
                lambda timeout: self._client.stub.ListMessages(request, timeout=timeout),
            )
        )

    async def _with_replies(self, messages: list[pb.Message]) -> list[web.Comment]:
        """The originals among `messages`, each with its reply: from `messages` when it is
        there, else read by id (a reply written after newer comments is on a newer page)."""
        replies = {m.reply_to: m for m in messages if m.reply_to}
        missing = [
            m.reply_id for m in messages if not m.reply_to and m.reply_id and m.id not in replies
        ]
        if missing:
            fetched = await asyncio.gather(*(self._get_or_none(i) for i in missing))
            replies.update({m.reply_to: m for m in fetched if m is not None})
        return comments.comments(messages, replies)

    async def _catch_up(self, thread: str, after_sequence: int) -> list[web.Comment]:
        page = await self._list(
            pb.ListMessagesRequest(
                conversation_id=comments.conversation_of(thread),
                after_sequence=after_sequence,
                page_size=MAX_CATCH_UP,
            )
        )
        messages = list(page.messages)
        shown = await self._with_replies(messages)
        # A reply whose original is older than `after_sequence`: its original, answered.
        known = {m.id for m in messages}
        late = [m for m in messages if m.reply_to and m.reply_to not in known]
        for reply in late:
            original = await self._get_or_none(reply.reply_to)
            if original is not None and comments.is_public(original):
                shown.append(comments.comment(original, reply))
        return shown

    async def _measured(self, method: str, handle: Callable[[], Awaitable[T]]) -> T:
        began = time.perf_counter()
        code = "ok"
        try:
            return await handle()
        except ConnectError as exc:
            code = exc.code.value
            raise
        finally:
            self._metrics.requests.labels(method, code).inc()
            self._metrics.handling.labels(method).observe(time.perf_counter() - began)


async def _store(call: Awaitable[T]) -> T:
    """A store call; its refusal as the public API's error, never the store's own words
    (which name the store's fields, and may say more than a browser should know). AlreadyExists
    and NotFound pass: their callers say what they mean."""
    try:
        return await call
    except (AlreadyExists, NotFound):
        raise
    except StoreError as exc:
        raise _public(exc) from None


def _public(exc: StoreError) -> ConnectError:
    if isinstance(exc, Unavailable):
        return ConnectError(
            Code.UNAVAILABLE, "the comments are unavailable right now; try again shortly"
        )
    if isinstance(exc, InvalidArgument):
        log.warning("the store refused a request the front door let through: %s", exc)
        return ConnectError(Code.INVALID_ARGUMENT, "the store refused this comment")
    log.error("the store failed a call: %s", exc)
    return ConnectError(Code.INTERNAL, "the comments failed; try again later")
