"""Durations as people write them (--retain-*, `ackbot purge --older-than`)."""

from __future__ import annotations

import argparse

import pytest

from ackbot.common.flags import duration_seconds, parse_duration
from ackbot.store.config import load_config


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86_400),
        ("12h", 43_200),
        ("1d12h", 129_600),
        ("90m", 5_400),
        ("45s", 45),
        ("2w", 1_209_600),
        ("1.5h", 5_400),
        ("30", 30),
        ("0s", 0),
        (" 7D ", 7 * 86_400),
    ],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "7x", "7d3", "-1d", "-5", "nan", "inf", "7 d", "1d-2h"])
def test_anything_else_is_refused_with_the_forms_named(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        duration_seconds(text)


def test_the_store_reads_its_retention_from_flags_and_environment() -> None:
    config = load_config(
        ["--retain-processed", "30d", "--sweep-seconds", "5"],
        {"ACKBOT_STORE_RETAIN_DELETED": "12h"},
    )
    assert config.retention_seconds == {"PROCESSED": 30 * 86_400, "DELETED": 43_200}
    assert config.sweep_seconds == 5
    assert load_config([], {}).retention_seconds == {}


def test_a_bad_retention_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        load_config(["--retain-dead", "soon"], {})
    assert exited.value.code == 2
    assert "--retain-dead" in capsys.readouterr().err
