"""Edit keys: a commenter's proof that a comment is theirs, checked without storing anything.

A key is `v1.EXPIRES.MAC`: EXPIRES the end of the comment's edit window (Unix seconds) and MAC
the HMAC-SHA256, under the front door's secret (--edit-secret-file), of the comment's id and
EXPIRES. Any front door with the same secret checks it, with nothing stored and nothing read
from the store: the window is in the key, and the MAC stops anyone from moving it or from
using it for another comment. An edit's new comment gets a key with the old one's EXPIRES, so
editing never extends the window.

The MAC proves ownership also after the window (a HELD comment stays visible to its author for
as long as it waits for a moderator); the window limits deleting and editing only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

VERSION = "v1"
# A key is short (under 70 characters); anything longer is refused before any work.
MAX_KEY_CHARS = 100
SECRET_BYTES = 32


def random_secret() -> bytes:
    """A secret for one process (no --edit-secret-file): its keys are good on it alone."""
    return secrets.token_bytes(SECRET_BYTES)


@dataclass(frozen=True)
class EditKeys:
    secret: bytes

    def make(self, comment_id: str, expires: int) -> str:
        return f"{VERSION}.{expires}.{self._mac(comment_id, expires)}"

    def check(self, comment_id: str, key: str) -> int | None:
        """The window's end (Unix seconds) when `key` is `comment_id`'s, else None."""
        if not key or len(key) > MAX_KEY_CHARS:
            return None
        version, _, rest = key.partition(".")
        expires_text, _, mac = rest.partition(".")
        if version != VERSION or not expires_text.isascii() or not expires_text.isdigit():
            return None
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(comment_id, expires)):
            return None
        return expires

    def _mac(self, comment_id: str, expires: int) -> str:
        # The purpose is part of the MAC, so the secret signs nothing else interchangeably.
        data = f"ackbot-web edit key\0{comment_id}\0{expires}".encode()
        digest = hmac.new(self.secret, data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def edited_id(old_id: str) -> str:
    """The id of the comment an edit of `old_id` posts: derived, so that a retried edit finds
    it stored instead of posting it twice. `web.edit.` cannot be a PostComment id (a
    request_id has no dot), so nobody can take it first."""
    digest = hashlib.sha256(old_id.encode()).digest()
    return "web.edit." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:32]
