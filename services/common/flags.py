"""Flag parsing shared by the entry points: value types, and flags that fall back to env vars.

Every type raises argparse.ArgumentTypeError, so argparse reports a bad value under the flag's
name and exits 2, whether the value came from the command line or from the environment.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence

from ackbot.common.serving import split_host_port

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Longest a shutdown grace period or a lock wait may be: beyond it, a typo, not a wish.
MAX_WAIT_SECONDS = 3600.0


def address(text: str) -> str:
    """HOST:PORT."""
    try:
        split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def seconds_in(low: float, high: float, *, low_inclusive: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds, got {text!r}"
            ) from None
        above_low = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above_low and value <= high):
            low_text = f"{low:g}" if low_inclusive else f"more than {low:g}"
            raise argparse.ArgumentTypeError(f"must be between {low_text} and {high:g}, got {text}")
        return value

    return parse


class EnvFlags:
    """Adds flags whose default comes from PREFIX_<FLAG> in the environment; a flag wins, and an
    empty variable counts as unset. argparse converts such string defaults with the flag's
    `type` (so bad ones are reported under the flag's name) but does not check `choices`:
    `check_choices` does, after parsing."""

    def __init__(
        self, parser: argparse.ArgumentParser, env: Mapping[str, str], prefix: str
    ) -> None:
        self.parser = parser
        self._env = env
        self._prefix = prefix

    def add(self, flag: str, default: object, help_text: str, **kwargs: object) -> None:
        env_name = self._prefix + flag.lstrip("-").replace("-", "_").upper()
        shown = kwargs.pop("shown_default", "%(default)s")
        self.parser.add_argument(
            flag,
            default=self._env.get(env_name) or default,
            help=f"{help_text} (env {env_name}; default {shown})",
            **kwargs,  # type: ignore[arg-type]
        )

    def add_log_level(self, default: str) -> None:
        self.add("--log-level", default, "logging level", choices=LOG_LEVELS, type=str.upper)

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        args = self.parser.parse_args(argv)
        self.check_choices(args)
        return args

    def check_choices(self, args: argparse.Namespace) -> None:
        for action in self.parser._actions:
            value = getattr(args, action.dest, None)
            if action.choices is not None and value is not None and value not in action.choices:
                self.parser.error(f"argument {action.option_strings[0]}: invalid choice: {value!r}")
