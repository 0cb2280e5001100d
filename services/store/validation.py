"""Request rules from docs/semantics.md. Each check names the field and the rule it breaks.

Pure functions over plain values (no protobuf, no database), so they are unit-tested directly
and the servicer stays a thin translation layer.
"""

from __future__ import annotations

from ackbot.common.limits import ID_PATTERN, Limits, first_forbidden_char, utf8_size
from ackbot.store.errors import FieldViolation, InvalidArgument

# Nanoseconds in a signed 64-bit integer: the range the database column can hold.
MIN_TIME_NS = -(2**63)
MAX_TIME_NS = 2**63 - 1


class Violations:
    """Collects every broken rule of one request, so the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def check_id(
    v: Violations, field: str, value: str, limits: Limits, *, required: bool = True
) -> None:
    if not value:
        if required:
            v.add(field, "is required")
        return
    if len(value) > limits.max_id_chars:
        v.add(field, f"must be at most {limits.max_id_chars} characters (got {len(value)})")
    elif not ID_PATTERN.fullmatch(value):
        v.add(field, "may contain only the characters A-Z a-z 0-9 . _ : ~ -")


def check_author(v: Violations, field: str, value: str, limits: Limits) -> None:
    if not value:
        v.add(field, "is required")
        return
    if len(value) > limits.max_author_chars:
        v.add(field, f"must be at most {limits.max_author_chars} characters (got {len(value)})")
    bad = first_forbidden_char(value, allow_newlines=False)
    if bad is not None:
        v.add(field, f"must not contain control characters (found U+{ord(bad):04X})")


def check_label(v: Violations, field: str, value: str, max_chars: int) -> None:
    """An optional free-form name (a stream's consumer) that ends up in log lines."""
    if len(value) > max_chars:
        v.add(field, f"must be at most {max_chars} characters (got {len(value)})")
    bad = first_forbidden_char(value, allow_newlines=False)
    if bad is not None:
        v.add(field, f"must not contain control characters (found U+{ord(bad):04X})")


def check_text(v: Violations, field: str, value: str, limits: Limits) -> None:
    if not value:
        v.add(field, "is required")
        return
    size = utf8_size(value)
    if size > limits.max_text_bytes:
        v.add(field, f"must be at most {limits.max_text_bytes} bytes of UTF-8 (got {size})")
    bad = first_forbidden_char(value, allow_newlines=True)
    if bad is not None:
        v.add(
            field,
            "must not contain control characters other than tab, line feed and carriage "
            f"return (found U+{ord(bad):04X})",
        )


def check_reason(v: Violations, field: str, value: str, limits: Limits) -> None:
    if len(value) > limits.max_reason_chars:
        v.add(field, f"must be at most {limits.max_reason_chars} characters (got {len(value)})")
    if "\x00" in value:
        v.add(field, "must not contain NUL (U+0000)")


def check_time_ns(v: Violations, field: str, value_ns: int) -> None:
    if not MIN_TIME_NS <= value_ns <= MAX_TIME_NS:
        v.add(field, "must be between 1677-09-21 and 2262-04-11 (64-bit nanoseconds)")


def check_duration(
    v: Violations, field: str, seconds: float, low: float, high: float, *, required: bool
) -> None:
    if seconds == 0 and not required:
        return
    if not low <= seconds <= high:
        v.add(field, f"must be between {low:g} s and {high:g} s (got {seconds:g} s)")


def check_range(v: Violations, field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        v.add(field, f"must be between {low} and {high} (got {value})")
