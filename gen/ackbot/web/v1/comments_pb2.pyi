import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMENT_STATE_UNSPECIFIED: _ClassVar[CommentState]
    COMMENT_STATE_WAITING: _ClassVar[CommentState]
    COMMENT_STATE_ANSWERING: _ClassVar[CommentState]
    COMMENT_STATE_ANSWERED: _ClassVar[CommentState]
    COMMENT_STATE_UNANSWERED: _ClassVar[CommentState]
    COMMENT_STATE_HELD: _ClassVar[CommentState]
    COMMENT_STATE_DELETED: _ClassVar[CommentState]
COMMENT_STATE_UNSPECIFIED: CommentState
COMMENT_STATE_WAITING: CommentState
COMMENT_STATE_ANSWERING: CommentState
COMMENT_STATE_ANSWERED: CommentState
COMMENT_STATE_UNANSWERED: CommentState
COMMENT_STATE_HELD: CommentState
COMMENT_STATE_DELETED: CommentState

class Comment(_message.Message):
    __slots__ = ("id", "thread", "author", "text", "create_time", "sequence", "state", "from_bot", "reply")
    ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_BOT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    id: str
    thread: str
    author: str
    text: str
    create_time: _timestamp_pb2.Timestamp
    sequence: int
    state: CommentState
    from_bot: bool
    reply: Comment
    def __init__(self, id: _Optional[str] = ..., thread: _Optional[str] = ..., author: _Optional[str] = ..., text: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., state: _Optional[_Union[CommentState, str]] = ..., from_bot: _Optional[bool] = ..., reply: _Optional[_Union[Comment, _Mapping]] = ...) -> None: ...

class PostCommentRequest(_message.Message):
    __slots__ = ("thread", "author", "text", "request_id")
    THREAD_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    thread: str
    author: str
    text: str
    request_id: str
    def __init__(self, thread: _Optional[str] = ..., author: _Optional[str] = ..., text: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PostCommentResponse(_message.Message):
    __slots__ = ("comment", "edit_key", "edit_expire_time")
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    EDIT_KEY_FIELD_NUMBER: _ClassVar[int]
    EDIT_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    comment: Comment
    edit_key: str
    edit_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, comment: _Optional[_Union[Comment, _Mapping]] = ..., edit_key: _Optional[str] = ..., edit_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListThreadRequest(_message.Message):
    __slots__ = ("thread", "page_size", "page_token", "own_comments")
    THREAD_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWN_COMMENTS_FIELD_NUMBER: _ClassVar[int]
    thread: str
    page_size: int
    page_token: str
    own_comments: _containers.RepeatedCompositeFieldContainer[CommentKey]
    def __init__(self, thread: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., own_comments: _Optional[_Iterable[_Union[CommentKey, _Mapping]]] = ...) -> None: ...

class CommentKey(_message.Message):
    __slots__ = ("id", "edit_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    EDIT_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    edit_key: str
    def __init__(self, id: _Optional[str] = ..., edit_key: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_text_bytes", "max_author_chars", "posts_per_minute", "edit_window_seconds")
    MAX_TEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AUTHOR_CHARS_FIELD_NUMBER: _ClassVar[int]
    POSTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    EDIT_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_text_bytes: int
    max_author_chars: int
    posts_per_minute: int
    edit_window_seconds: int
    def __init__(self, max_text_bytes: _Optional[int] = ..., max_author_chars: _Optional[int] = ..., posts_per_minute: _Optional[int] = ..., edit_window_seconds: _Optional[int] = ...) -> None: ...

class ListThreadResponse(_message.Message):
    __slots__ = ("comments", "next_page_token", "last_sequence", "limits", "held_comments")
    COMMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    HELD_COMMENTS_FIELD_NUMBER: _ClassVar[int]
    comments: _containers.RepeatedCompositeFieldContainer[Comment]
    next_page_token: str
    last_sequence: int
    limits: Limits
    held_comments: _containers.RepeatedCompositeFieldContainer[Comment]
    def __init__(self, comments: _Optional[_Iterable[_Union[Comment, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., last_sequence: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., held_comments: _Optional[_Iterable[_Union[Comment, _Mapping]]] = ...) -> None: ...

class WatchThreadRequest(_message.Message):
    __slots__ = ("thread", "after_sequence")
    THREAD_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    thread: str
    after_sequence: int
    def __init__(self, thread: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchThreadResponse(_message.Message):
    __slots__ = ("comment",)
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    comment: Comment
    def __init__(self, comment: _Optional[_Union[Comment, _Mapping]] = ...) -> None: ...

class DeleteCommentRequest(_message.Message):
    __slots__ = ("id", "edit_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    EDIT_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    edit_key: str
    def __init__(self, id: _Optional[str] = ..., edit_key: _Optional[str] = ...) -> None: ...

class DeleteCommentResponse(_message.Message):
    __slots__ = ("already_deleted",)
    ALREADY_DELETED_FIELD_NUMBER: _ClassVar[int]
    already_deleted: bool
    def __init__(self, already_deleted: _Optional[bool] = ...) -> None: ...

class EditCommentRequest(_message.Message):
    __slots__ = ("id", "edit_key", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    EDIT_KEY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    edit_key: str
    text: str
    def __init__(self, id: _Optional[str] = ..., edit_key: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class EditCommentResponse(_message.Message):
    __slots__ = ("comment", "edit_key", "edit_expire_time")
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    EDIT_KEY_FIELD_NUMBER: _ClassVar[int]
    EDIT_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    comment: Comment
    edit_key: str
    edit_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, comment: _Optional[_Union[Comment, _Mapping]] = ..., edit_key: _Optional[str] = ..., edit_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
