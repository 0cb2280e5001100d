"""Hypothesis strategies for hostile field values: empty, at and past each limit, huge, every
Unicode plane, control characters, NUL, and numbers across the whole range of their wire type.

Lone surrogates are absent on purpose: the protobuf client refuses to serialize them
(UnicodeEncodeError before anything is sent), so they cannot reach the store through a stub.
Invalid UTF-8 on the wire is sent as raw bytes instead (test_wire_bytes.py)."""

from __future__ import annotations

import unicodedata

from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import strategies as st

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:~-"
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)

# Characters the rules single out, and one from each plane that has assigned characters.
SPECIAL_CHARS = (
    "\x00\x01\x07\t\n\r\x1b\x7f\x80\x85\x9f\u00a0\u00e9\u200b\u2028\u2029\ufeff\ufffd\uffff"
    "\U0001f916\U00020000\U00030000\U000e0001\U000f0000\U0010ffff"
)
any_char = st.characters(exclude_categories=("Cs",))
char_or_special = st.one_of(any_char, st.sampled_from(SPECIAL_CHARS))


def repeated(chars: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    """One character repeated: a cheap way to reach sizes hypothesis would take long to draw."""
    return st.builds(lambda char, count: char * count, chars, st.integers(low, high))


def free_text(limit: int) -> st.SearchStrategy[str]:
    """Short arbitrary strings, and long ones around `limit` (characters or bytes)."""
    return st.one_of(
        st.just(""),
        st.text(char_or_special, max_size=40),
        repeated(st.sampled_from("x\u00e9\u20ac\U0001f916\x00\n"), limit - 2, limit + 2),
        repeated(char_or_special, 0, 4 * limit),
    )


def message_ids(known: list[str] | None = None) -> st.SearchStrategy[str]:
    """Valid ids, ids at and past 128 characters, ids with one bad character, and ids that exist
    in the store (so the call reaches the repository, not only validation)."""
    choices = [
        st.just(""),
        st.text(ID_ALPHABET, min_size=1, max_size=20),
        repeated(st.sampled_from(ID_ALPHABET), 127, 130),
        st.builds(
            lambda head, bad, tail: head + bad + tail,
            st.text(ID_ALPHABET, max_size=5),
            char_or_special.filter(lambda c: c not in ID_ALPHABET),
            st.text(ID_ALPHABET, max_size=5),
        ),
        st.text(char_or_special, max_size=10),
    ]
    if known:
        choices.append(st.sampled_from(known))
    return st.one_of(*choices)


lease_tokens = st.one_of(
    st.just(""),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=66),
    st.text(char_or_special, max_size=70),
    repeated(st.sampled_from("a:0"), 60, 70),
)


@st.composite
def durations(draw: st.DrawFn) -> duration_pb2.Duration:
    """Durations of any seconds and nanos the wire can carry, including invalid combinations
    (opposite signs, nanos past a second), weighted towards the 0 s - 1 h limits."""
    seconds = draw(st.one_of(st.sampled_from([-1, 0, 1, 59, 3599, 3600, 3601]), INT64))
    nanos = draw(st.one_of(st.sampled_from([0, 1, -1, 999_999_999, 10**9]), INT32))
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


@st.composite
def timestamps(draw: st.DrawFn) -> timestamp_pb2.Timestamp:
    """Timestamps across int64 seconds, with nanos anywhere in int32, near the 64-bit
    nanosecond limits (1677 and 2262) too."""
    edge = 9_223_372_036  # 2**63 ns in whole seconds
    seconds = draw(
        st.one_of(
            st.sampled_from([0, -1, 1761333653, edge - 1, edge, edge + 1, -edge - 1, -edge]),
            INT64,
        )
    )
    nanos = draw(st.one_of(st.sampled_from([0, 854_775_807, 854_775_808, -1, 10**9]), INT32))
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


enum_values = st.one_of(st.integers(-1, 6), INT32)
int32_counts = st.one_of(st.sampled_from([-1, 0, 1, 1000, 1001]), INT32)


def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value three times in four, else a hostile one. Drawn independently per field,
    so a request usually breaks few rules at once and gets past validation often enough to
    reach the repository, where the other bugs live."""
    return st.integers(0, 3).flatmap(lambda pick: hostile if pick == 0 else valid)


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


valid_ids = st.text(ID_ALPHABET, min_size=1, max_size=128)
valid_authors = st.text(
    char_or_special.filter(lambda c: not _is_control(c)), min_size=1, max_size=64
)
valid_texts = st.text(
    char_or_special.filter(lambda c: c in "\t\n\r" or not _is_control(c)), min_size=1, max_size=200
)
