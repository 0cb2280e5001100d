"""The contract's limits and text rules (docs/semantics.md, "Limits"), written once.

The store enforces them; the bot stays inside them (its replies, release reasons, persona and
consumer name) so that nothing it sends can be refused; the CLI asks within them. Two limits are
per-store settings, the text and request sizes: `Limits` carries those with the rest, and a bot
learns a store's text limit when its stream opens (REPLY_LIMIT_METADATA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ID_CHARS = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9._:~-]+")
MAX_AUTHOR_CHARS = 64
DEFAULT_MAX_TEXT_BYTES = 16 * 1024
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
MAX_REASON_CHARS = 1024
# Lease tokens are issued by the store; consumer names end up in its log lines.
MAX_LEASE_TOKEN_CHARS = 64
MAX_CONSUMER_CHARS = 64
MIN_LEASE_SECONDS = 1.0
MAX_LEASE_SECONDS = 3600.0
MAX_RETRY_AFTER_SECONDS = 3600.0
MIN_IN_FLIGHT = 1
MAX_IN_FLIGHT = 1000
MAX_PAGE_SIZE = 1000
# Most items in one BatchCreateMessages call (AIP-233 asks for a documented maximum); the
# whole call is also bound by the store's --max-request-bytes.
MAX_BATCH_CREATE_ITEMS = 1000
# A ListMessages page or a stream response ends where it would pass this (it always holds at
# least one message): well under a client's default 4 MiB receive limit.
MAX_RESPONSE_BYTES = 1024 * 1024

# The initial-metadata key on which a store tells each stream its --max-text-bytes, so a bot
# never sends a reply longer than the store it talks to accepts.
REPLY_LIMIT_METADATA = "ackbot-max-text-bytes"

# Unicode categories Cc (C0 and C1 controls, NUL included: PostgreSQL cannot store NUL in text)
# and Cs (lone surrogates, which are not valid UTF-8), as one regex: a per-character category
# lookup was the costliest part of validating a 16 KiB text. Text may keep tab, LF and CR.
_FORBIDDEN_IN_NAME = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """The limits one store enforces; each rejection names the field and the limit."""

    max_id_chars: int = MAX_ID_CHARS
    max_author_chars: int = MAX_AUTHOR_CHARS
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_reason_chars: int = MAX_REASON_CHARS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    min_lease_seconds: float = MIN_LEASE_SECONDS
    max_lease_seconds: float = MAX_LEASE_SECONDS
    max_retry_after_seconds: float = MAX_RETRY_AFTER_SECONDS
    min_in_flight: int = MIN_IN_FLIGHT
    max_in_flight: int = MAX_IN_FLIGHT
    max_page_size: int = MAX_PAGE_SIZE


def first_forbidden_char(value: str, *, allow_newlines: bool) -> str | None:
    """The first character the store refuses in a text (`allow_newlines`) or in a name."""
    pattern = _FORBIDDEN_IN_TEXT if allow_newlines else _FORBIDDEN_IN_NAME
    found = pattern.search(value)
    return found.group() if found else None


def utf8_size(text: str) -> int:
    # surrogatepass: a lone surrogate is counted (and refused by the character rule), not an
    # encoding error.
    return len(text.encode("utf-8", errors="surrogatepass"))


# Ends a text that was cut, so a reader sees it was (the LLM backend marks a model's own cut
# the same way). Kept when a marked text is cut again: the cut comes first, the mark after.
CUT_MARK = "…"


def fit_text(text: str, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> str:
    """Drops what the store would refuse in a text (control characters other than tab, LF and
    CR; lone surrogates) and cuts it to `max_bytes` of UTF-8 on a character boundary, ending
    with CUT_MARK when it was cut (unless `max_bytes` leaves no room for more than the mark)."""
    text = _FORBIDDEN_IN_TEXT.sub("", text)
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    mark = CUT_MARK.encode("utf-8")
    if max_bytes <= len(mark):
        return encoded[:max_bytes].decode("utf-8", errors="ignore")
    kept = encoded[: max_bytes - len(mark)].decode("utf-8", errors="ignore")
    # A text already ending with the mark (a model's own cut) that fits whole but for the
    # mark loses only what the mark replaces.
    return kept.removesuffix(CUT_MARK).rstrip() + CUT_MARK
