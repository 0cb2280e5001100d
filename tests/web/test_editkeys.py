"""Edit keys without a server: a key proves one comment and one window's end under one
secret, and nothing else."""

from __future__ import annotations

from ackbot.web.editkeys import EditKeys, edited_id
from ackbot.web.service import REQUEST_ID

KEYS = EditKeys(b"k" * 32)


def test_a_key_proves_its_comment_and_carries_the_windows_end():
    key = KEYS.make("web.abc", 1_800_000_000)
    assert KEYS.check("web.abc", key) == 1_800_000_000
    # The same secret elsewhere (another front door) agrees.
    assert EditKeys(b"k" * 32).check("web.abc", key) == 1_800_000_000


def test_a_key_proves_nothing_else():
    key = KEYS.make("web.abc", 1_800_000_000)
    version, expires, mac = key.split(".")
    refused = [
        ("web.abd", key),  # another comment
        ("web.abc", f"{version}.{int(expires) + 1}.{mac}"),  # a later end
        ("web.abc", f"v2.{expires}.{mac}"),
        ("web.abc", f"{version}.{expires}.{mac[:-1]}"),
        ("web.abc", f"{version}.-{expires}.{mac}"),
        ("web.abc", f"{version}.{expires}"),
        ("web.abc", ""),
        ("web.abc", key + "x" * 100),
        ("web.abc", f"{version}.\u0661\u0662.{mac}"),  # digits, but not ASCII ones
    ]
    for comment_id, given in refused:
        assert KEYS.check(comment_id, given) is None, given
    assert EditKeys(b"x" * 32).check("web.abc", key) is None  # another secret


def test_an_edits_id_is_stable_and_no_post_can_take_it():
    new = edited_id("web.0123456789abcdef")
    assert new == edited_id("web.0123456789abcdef")
    assert new != edited_id("web.0123456789abcdeg")
    assert new.startswith("web.edit.")
    # PostComment stores "web." + request_id; a request_id never holds the dot.
    assert not REQUEST_ID.fullmatch(new.removeprefix("web."))
