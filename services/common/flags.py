"""Flag parsing shared by the entry points: value types, and settings declared once.

A service's settings are the fields of one frozen dataclass. A field made with `setting()`
declares its own flag, help, parser type, metavar and choices; `load_settings` builds the
argparse parser from those fields, falls back to PREFIX_<FLAG> environment variables and
constructs the dataclass. Fields made any other way are not flags and keep their defaults.

Every type raises argparse.ArgumentTypeError, so argparse reports a bad value under the flag's
name and exits 2, whether the value came from the command line or from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ackbot.common.serving import split_host_port

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Longest a shutdown grace period or a lock wait may be: beyond it, a typo, not a wish.
MAX_WAIT_SECONDS = 3600.0

T = TypeVar("T")
C = TypeVar("C", bound="DataclassInstance")

# The key under which a field's metadata carries its Flag.
_FLAG_KEY = "ackbot.flag"


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
            low_text = f"at least {low:g}" if low_inclusive else f"more than {low:g}"
            raise argparse.ArgumentTypeError(f"must be {low_text} and at most {high:g}, got {text}")
        return value

    return parse


# A duration as people write one: `30d`, `12h`, `1d12h`, `90s`, `1.5h`; a bare number is seconds.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNIT_SECONDS = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`: `7d`, `12h`, `1d12h`, `30m`, `45s`, `2w`, or a bare number of
    seconds; ValueError naming the forms otherwise."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = list(_DURATION_PART.finditer(value))
        if not value or "".join(part.group(0) for part in parts) != value:
            raise ValueError(
                f"expected a duration such as 7d, 12h, 30m or 45s, got {text!r}"
            ) from None
        seconds = sum(float(part.group(1)) * _UNIT_SECONDS[part.group(2)] for part in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a duration of 0 or more, got {text!r}")
    return seconds


def duration_seconds(text: str) -> float:
    """A flag's duration (see parse_duration), in seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one setting is spelled on the command line; `flag` None means --FIELD-NAME."""

    help_text: str
    flag: str | None = None
    type: Callable[[str], Any] = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    # What --help shows as the default, when the field's own default says nothing useful.
    shown_default: str | None = None
    # A switch: the flag alone means True (`--x`); `--x=no` and the variable go through `type`.
    switch: bool = False


def setting(
    default: T,
    help_text: str,
    *,
    type: Callable[[str], Any] = str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    shown_default: str | None = None,
) -> T:
    """A dataclass field that is also a flag (and an environment variable)."""
    spec = Flag(
        help_text,
        flag=flag,
        type=type,
        metavar=metavar,
        choices=tuple(choices) if choices is not None else None,
        shown_default=shown_default,
    )
    return dataclasses.field(default=default, metadata={_FLAG_KEY: spec})


def boolean(text: str) -> bool:
    """yes/no, true/false, on/off, 1/0."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def switch_setting(help_text: str) -> bool:
    """A False-by-default field whose flag alone turns it on (its variable: 1/yes/true)."""
    spec = Flag(help_text, type=boolean, metavar="yes|no", switch=True)
    default = False
    return dataclasses.field(default=default, metadata={_FLAG_KEY: spec})


def log_level_setting(default: str = "INFO") -> str:
    return setting(default, "logging level", choices=LOG_LEVELS, type=str.upper)


def log_format_setting() -> str:
    return setting(
        "text",
        "log lines as text, or as one JSON object per line",
        choices=LOG_FORMATS,
        type=str.lower,
    )


def metrics_listen_setting() -> str | None:
    return setting(
        None,
        "HOST:PORT to serve Prometheus metrics on (/metrics); port 0 picks a free one",
        type=address,
        shown_default="off",
    )


@dataclasses.dataclass(frozen=True)
class Command:
    """What a service's command line says about itself, around its settings."""

    prog: str
    summary: str
    env_prefix: str


@dataclasses.dataclass(frozen=True)
class FlagField:
    """A flag-backed field of a settings class, with its flag and variable names resolved."""

    field: dataclasses.Field[Any]
    spec: Flag
    flag: str
    env_name: str


def flag_fields(cls: type[DataclassInstance], env_prefix: str) -> Iterator[FlagField]:
    """The flag-backed fields of `cls`, in declaration order (the order --help lists them)."""
    for item in dataclasses.fields(cls):
        spec = item.metadata.get(_FLAG_KEY)
        if spec is None:
            continue
        flag = spec.flag or "--" + item.name.replace("_", "-")
        env_name = env_prefix + flag.lstrip("-").replace("-", "_").upper()
        yield FlagField(item, spec, flag, env_name)


def package_version() -> str:
    """The installed package's version, or "unknown" when run from a source tree."""
    try:
        return importlib.metadata.version("ackbot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def version_line() -> str:
    """`ackbot X.Y.Z`, the installed package's version (what a bug report needs), the same on
    every command."""
    version = package_version()
    if version == "unknown":  # run from a source tree, not installed
        return "ackbot (version unknown: not installed)"
    return f"ackbot {version}"


def missing_extra(exc: ModuleNotFoundError, extra_modules: Sequence[str]) -> str | None:
    """The module of an optional extra that `exc` found missing (then the entry point says in
    one line which extra to install), or None when something else is missing (a real bug)."""
    missing = (exc.name or "").partition(".")[0]
    return missing if missing in extra_modules else None


class _FromEnv(str):
    """A default taken from the environment: argparse hands this very object to the flag's
    type, so a bad value can be reported under the variable that holds it."""

    __slots__ = ()


def _naming_env(convert: Callable[[str], Any] | None, env_name: str) -> Callable[[str], Any]:
    if convert is None:
        return str  # argparse's own default: the text as given

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            if not isinstance(text, _FromEnv):
                raise
            problem = str(exc)
            if not isinstance(exc, argparse.ArgumentTypeError):  # argparse's own wording
                problem = f"invalid {parse.__name__} value: {text!r}"
            raise argparse.ArgumentTypeError(f"{env_name} (environment): {problem}") from None

    # argparse names a value after its type's function: "invalid int value: 'many'".
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def build_parser(
    cls: type[DataclassInstance], command: Command, env: Mapping[str, str]
) -> argparse.ArgumentParser:
    """One flag per setting, each with its environment variable as the fallback.

    A set, non-empty variable becomes the flag's default as a string; argparse converts such a
    default with the flag's `type` only when the flag is absent, so a flag wins, and a bad
    variable is reported under the flag's name. A setting found in neither stays out of the
    namespace (SUPPRESS), and the dataclass supplies its default.
    """
    settings = list(flag_fields(cls, command.env_prefix))
    example = settings[0].env_name if settings else f"{command.env_prefix}FLAG"
    parser = argparse.ArgumentParser(
        prog=command.prog,
        description=f"{command.summary} Every flag can also be set by environment: "
        f"{command.env_prefix}<FLAG>, e.g. {example}; a flag wins over it.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    for item in settings:
        spec = item.spec
        from_env = env.get(item.env_name) or None
        # A set variable is the default that applies, so --help shows it (as argparse's
        # %(default)s did when the variable was the flag's default).
        shown = spec.shown_default or from_env or str(item.field.default)
        # The help text is not a %-format for argparse: a variable's value may hold a '%'.
        help_text = f"{spec.help_text} (env {item.env_name}; default {shown})".replace("%", "%%")
        metavar = spec.metavar
        if metavar is None and item.flag.endswith("listen"):
            metavar = "HOST:PORT"  # as the bot's --store shows an address
        if metavar is None and spec.choices is None:
            # argparse would name the value after the dest, the field (`--db DB_URL`); the
            # flag's own name keeps the usage line as users know it (`--db DB`).
            metavar = item.flag.lstrip("-").replace("-", "_").upper()
        switch: dict[str, Any] = {"nargs": "?", "const": True} if spec.switch else {}
        parser.add_argument(
            item.flag,
            dest=item.field.name,
            default=argparse.SUPPRESS if from_env is None else _FromEnv(from_env),
            help=help_text,
            metavar=metavar,
            choices=spec.choices,
            type=_naming_env(spec.type, item.env_name),
            **switch,
        )
    return parser


def _check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # argparse checks `choices` for values on the command line, not for defaults (ours come
    # from the environment).
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            parser.error(f"argument {action.option_strings[0]}: invalid choice: {value!r}")


def load_settings(
    cls: type[C], command: Command, argv: Sequence[str] | None, env: Mapping[str, str]
) -> C:
    """Parses `argv` (None: sys.argv) over the environment into `cls`; a bad value exits 2."""
    parser = build_parser(cls, command, env)
    args = parser.parse_args(argv)
    _check_choices(parser, args)
    return cls(**vars(args))
