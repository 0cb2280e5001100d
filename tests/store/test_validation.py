"""Request rules: each broken rule is reported under the field's name, all of them at once."""

from __future__ import annotations

import math

import pytest
from google.protobuf.duration_pb2 import Duration

from ackbot.common.limits import Limits
from ackbot.store import validation as rules
from ackbot.store.config import StoreConfig
from ackbot.store.errors import FieldViolation, InvalidArgument
from ackbot.store.mapping import encode_page_token
from ackbot.store.types import NewMessage
from ackbot.v1 import message_store_pb2 as pb

LIMITS = Limits()


def violations(check, *args, **kwargs) -> list[FieldViolation]:
    v = rules.Violations()
    check(v, *args, **kwargs)
    return v.items


def only(items: list[FieldViolation], field: str) -> str:
    assert len(items) == 1, items
    assert items[0].field == field
    return items[0].description


# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "x" * 128, "Az09._:~-", "01JB8X4Q9Z0000000000000000"])
def test_valid_ids(value):
    assert violations(rules.check_id, "message.id", value, LIMITS) == []


def test_id_of_129_chars_is_too_long():
    description = only(violations(rules.check_id, "message.id", "x" * 129, LIMITS), "message.id")
    assert "128" in description
    assert "129" in description


@pytest.mark.parametrize(
    "value", ["a b", "a/b", "a\nb", "é", "a+b", "a#b", "\x00", "id\n", "ä" * 3, "a,b"]
)
def test_id_with_bad_characters(value):
    description = only(violations(rules.check_id, "reply_to", value, LIMITS), "reply_to")
    assert "A-Z a-z 0-9 . _ : ~ -" in description


def test_id_required_or_optional():
    assert only(violations(rules.check_id, "id", "", LIMITS), "id") == "is required"
    assert violations(rules.check_id, "message.id", "", LIMITS, required=False) == []


# -- author -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "x" * 64, "ü" * 64, "Zoë the bot 🤖"])
def test_valid_authors(value):
    assert violations(rules.check_author, "message.author", value, LIMITS) == []


def test_author_of_65_chars_is_too_long():
    items = violations(rules.check_author, "message.author", "x" * 65, LIMITS)
    description = only(items, "message.author")
    assert "64" in description
    assert "65" in description


@pytest.mark.parametrize("char", ["\x00", "\n", "\t", "\r", "\x1b", "\x7f", "\x85", "\ud800"])
def test_author_with_control_characters(char):
    description = only(
        violations(rules.check_author, "reply.author", f"bob{char}", LIMITS), "reply.author"
    )
    assert f"U+{ord(char):04X}" in description


def test_author_required():
    assert only(violations(rules.check_author, "message.author", "", LIMITS), "message.author")


# -- text -------------------------------------------------------------------------------------


def test_text_of_exactly_16_kib_of_multibyte_utf8_is_allowed():
    text = "€" * 5461 + "a"  # 3 * 5461 + 1 = 16384 bytes
    assert len(text.encode()) == 16 * 1024
    assert violations(rules.check_text, "message.text", text, LIMITS) == []
    text = "é" * 8192
    assert len(text.encode()) == 16 * 1024
    assert violations(rules.check_text, "message.text", text, LIMITS) == []


def test_text_one_byte_over_16_kib_is_rejected_counting_bytes_not_chars():
    text = "é" * 8191 + "€"  # 8192 characters, 16385 bytes
    assert len(text.encode()) == 16 * 1024 + 1
    description = only(violations(rules.check_text, "message.text", text, LIMITS), "message.text")
    assert "16384" in description
    assert "16385" in description


def test_text_limit_follows_the_configured_limits():
    limits = Limits(max_text_bytes=4)
    assert violations(rules.check_text, "message.text", "€a", limits) == []
    assert only(violations(rules.check_text, "message.text", "€ab", limits), "message.text")


def test_text_allows_tab_newline_and_carriage_return():
    assert violations(rules.check_text, "message.text", "a\tb\nc\r\nd", LIMITS) == []


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x9f", "\udc00"])
def test_text_with_other_control_characters(char):
    description = only(
        violations(rules.check_text, "reply.text", f"hi{char}there", LIMITS), "reply.text"
    )
    assert f"U+{ord(char):04X}" in description


def test_text_required():
    assert only(violations(rules.check_text, "message.text", "", LIMITS), "message.text")


def test_too_long_text_with_a_nul_reports_both_rules():
    items = violations(rules.check_text, "message.text", "\x00" * (16 * 1024 + 1), LIMITS)
    assert [i.field for i in items] == ["message.text", "message.text"]


# -- reason, times, durations, ranges ---------------------------------------------------------


def test_reason_length_and_nul():
    assert violations(rules.check_reason, "reason", "", LIMITS) == []
    assert violations(rules.check_reason, "reason", "x" * 1024, LIMITS) == []
    assert violations(rules.check_reason, "reason", "line\nbreak\tok", LIMITS) == []
    description = only(violations(rules.check_reason, "reason", "x" * 1025, LIMITS), "reason")
    assert "1024" in description
    assert "1025" in description
    assert "NUL" in only(violations(rules.check_reason, "reason", "bad\x00", LIMITS), "reason")


def test_time_range_is_a_signed_64_bit_nanosecond():
    for ok in (0, -1, 2**63 - 1, -(2**63), 1761333653306 * 10**6):
        assert violations(rules.check_time_ns, "message.create_time", ok) == []
    for bad in (2**63, -(2**63) - 1):
        items = violations(rules.check_time_ns, "message.create_time", bad)
        assert only(items, "message.create_time")


@pytest.mark.parametrize("seconds", [1.0, 1.5, 3600.0])
def test_durations_inside_the_range(seconds):
    assert (
        violations(rules.check_duration, "lease_duration", seconds, 1.0, 3600.0, required=True)
        == []
    )


@pytest.mark.parametrize("seconds", [0.0, 0.999, 3600.001, -1.0, math.nan, math.inf, -math.inf])
def test_durations_outside_the_range(seconds):
    items = violations(rules.check_duration, "lease_duration", seconds, 1.0, 3600.0, required=True)
    description = only(items, "lease_duration")
    assert "1 s" in description
    assert "3600 s" in description


def test_an_optional_duration_may_be_zero_but_not_negative():
    assert violations(rules.check_duration, "retry_after", 0.0, 0.0, 3600.0, required=False) == []
    assert only(
        violations(rules.check_duration, "retry_after", -0.5, 0.0, 3600.0, required=False),
        "retry_after",
    )
    assert only(
        violations(rules.check_duration, "retry_after", 3601.0, 0.0, 3600.0, required=False),
        "retry_after",
    )


def test_ranges():
    for ok in (1, 500, 1000):
        assert violations(rules.check_range, "max_in_flight", ok, 1, 1000) == []
    for bad in (0, -1, 1001):
        description = only(
            violations(rules.check_range, "max_in_flight", bad, 1, 1000), "max_in_flight"
        )
        assert f"(got {bad})" in description


# -- collecting -------------------------------------------------------------------------------


def test_violations_collect_every_field_and_raise_once():
    v = rules.Violations()
    v.raise_if_any()  # nothing broken, nothing raised
    rules.check_id(v, "message.id", "bad id", LIMITS)
    rules.check_author(v, "message.author", "", LIMITS)
    rules.check_text(v, "message.text", "ok", LIMITS)
    rules.check_range(v, "page_size", 0, 1, 1000)

    with pytest.raises(InvalidArgument) as caught:
        v.raise_if_any()

    assert [i.field for i in caught.value.violations] == [
        "message.id",
        "message.author",
        "page_size",
    ]
    assert "message.author: is required" in str(caught.value)


def test_a_label_may_be_empty_but_not_long_or_carry_control_characters():
    for value, broken in [("", False), ("bot-1", False), ("b" * 65, True), ("a\nb", True)]:
        violations = rules.Violations()
        rules.check_label(violations, "consumer", value, 64)
        assert bool(violations.items) is broken, value
        assert all(item.field == "consumer" for item in violations.items)


def test_the_control_character_rule_is_unicode_categories_cc_and_cs_over_every_code_point():
    import unicodedata

    from ackbot.common.limits import first_forbidden_char

    for code_point in range(0x110000):
        char = chr(code_point)
        forbidden = unicodedata.category(char) in ("Cc", "Cs")
        assert (first_forbidden_char(char, allow_newlines=False) == char) == forbidden
        allowed_in_text = char in "\t\n\r"
        in_text = first_forbidden_char(char, allow_newlines=True) == char
        assert in_text == (forbidden and not allowed_in_text), hex(code_point)


# -- whole requests ---------------------------------------------------------------------------

CONFIG = StoreConfig()


def refused(call, *args) -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as caught:
        call(*args)
    return caught.value.violations


def test_a_list_query_caps_its_page_and_reads_a_token_for_its_order():
    query = rules.list_query(pb.ListMessagesRequest(page_size=10**6), CONFIG)
    assert query.limit == LIMITS.max_page_size

    token = encode_page_token(40, "sequence desc")
    newest_first = rules.list_query(
        pb.ListMessagesRequest(order_by=" Sequence  DESC ", page_token=token), CONFIG
    )
    assert (newest_first.newest_first, newest_first.before_sequence) == (True, 40)

    [violation] = refused(rules.list_query, pb.ListMessagesRequest(page_token=token), CONFIG)
    assert violation.field == "page_token"


def test_a_list_query_names_every_broken_rule():
    request = pb.ListMessagesRequest(page_size=-1, after_sequence=-1, order_by="id", state=99)
    fields = [v.field for v in refused(rules.list_query, request, CONFIG)]
    assert fields == ["page_size", "after_sequence", "order_by", "state"]


def test_a_bad_batch_item_is_answered_in_its_place():
    request = pb.BatchCreateMessagesRequest(
        requests=[
            pb.CreateMessageRequest(message=pb.Message(author="a", text="fine")),
            pb.CreateMessageRequest(message=pb.Message(author="a", text="")),
        ]
    )
    good, bad = rules.batch_create(request, LIMITS)
    assert isinstance(good, NewMessage)
    assert good.text == "fine"
    assert isinstance(bad, InvalidArgument)
    assert [v.field for v in bad.violations] == ["requests[1].message.text"]

    [violation] = refused(rules.batch_create, pb.BatchCreateMessagesRequest(), LIMITS)
    assert violation.field == "requests"


def test_a_consume_session_opens_with_open_and_a_window_in_range():
    [violation] = refused(rules.consume_open, pb.ConsumeRequest(), CONFIG)
    assert (violation.field, violation.description) == ("open", "is required in the first request")

    request = pb.ConsumeRequest(
        open=pb.StreamUnprocessedRequest(
            max_in_flight=LIMITS.max_in_flight + 1, lease_duration=Duration(seconds=0)
        ),
        max_in_flight=-1,
    )
    fields = [v.field for v in refused(rules.consume_open, request, CONFIG)]
    assert fields == ["open.max_in_flight", "open.lease_duration", "max_in_flight"]

    options = rules.consume_open(pb.ConsumeRequest(open=pb.StreamUnprocessedRequest()), CONFIG)
    assert options.max_in_flight == CONFIG.default_max_in_flight
    assert options.lease_ns == int(CONFIG.default_lease_seconds * 1e9)


def test_a_release_needs_its_token_and_an_extension_its_duration():
    fields = [v.field for v in refused(rules.release, pb.ReleaseMessageRequest(id="m1"), LIMITS)]
    assert fields == ["lease_token"]
    request = pb.ExtendLeaseRequest(id="m1", lease_token="t")
    [violation] = refused(rules.extend_lease, request, LIMITS)
    assert (violation.field, violation.description) == ("lease_duration", "is required")
    request.lease_duration.FromSeconds(30)
    assert rules.extend_lease(request, LIMITS) == 30 * 10**9
