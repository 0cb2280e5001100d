"""Evaluates the alert expressions of docs/operations.md over real scrapes, so the documented
alerts are checked against the series the services really export.

Only the PromQL those expressions use: `sum(...)` and `max(...)` without `by`, `rate` and
`increase` over a range, label matchers `=` and `=~`, and one comparison with a number. A range
function takes two scrapes (earlier, later) instead of Prometheus' stored samples; it does not
extrapolate to the window's edges as Prometheus does, which changes how much, never whether.
Anything outside that subset raises ValueError rather than evaluate to something wrong, and
`for:` durations are not modelled (the tests check whether the condition holds).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.metrics_scrape import Samples

OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

_EXPRESSION = re.compile(
    r"^(?:(?P<agg>sum|max)\()?(?:(?P<func>rate|increase)\()?"
    r"(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<matchers>[^}]*)\})?"
    r"(?:\[(?P<range>\d+)(?P<unit>[smh])\])?(?P<closing>\)*)\s*(?P<op>>|<)\s*(?P<bound>[\d.]+)$"
)
_MATCHER = re.compile(r'\s*(\w+)\s*(=~|=)\s*"([^"]*)"\s*,?')
_UNITS = {"s": 1, "m": 60, "h": 3600}
_OPERATORS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Scrape:
    samples: Samples
    at: float  # time.monotonic() when taken


def documented_alerts(path: Path = OPERATIONS_MD) -> dict[str, str]:
    """alert name -> its expr, from the YAML block under "Alerts worth having"."""
    text = path.read_text()
    section = text.split("## Alerts worth having", 1)[1].split("```yaml", 1)[1].split("```")[0]
    alerts: dict[str, str] = {}
    for block in section.split("- alert:")[1:]:
        name = block.split("\n", 1)[0].strip()
        expr = block.split("expr:", 1)[1]
        lines = []
        for line in expr.split("\n"):
            stripped = line.strip()
            if stripped.startswith(("for:", "labels:", "#")):
                break
            if stripped and stripped != ">":
                lines.append(stripped)
        alerts[name] = " ".join(lines)
    return alerts


def _matches(labels: frozenset[tuple[str, str]], matchers: list[tuple[str, str, str]]) -> bool:
    found = dict(labels)
    for label, kind, wanted in matchers:
        have = found.get(label, "")
        if kind == "=" and have != wanted:
            return False
        if kind == "=~" and re.fullmatch(wanted, have) is None:
            return False
    return True


def _select(samples: Samples, name: str, matchers: list[tuple[str, str, str]]) -> Samples:
    return {
        key: value
        for key, value in samples.items()
        if key[0] == name and _matches(key[1], matchers)
    }


def evaluate(expression: str, later: Scrape, earlier: Scrape | None = None) -> list[float]:
    """The values the expression yields (an alert fires when there is at least one)."""
    parsed = _EXPRESSION.match(expression.strip())
    if parsed is None:
        raise ValueError(f"outside the supported PromQL subset: {expression}")
    parts = parsed.groupdict()
    opened = (parts["agg"] is not None) + (parts["func"] is not None)
    if len(parts["closing"]) != opened or (parts["func"] is None) != (parts["range"] is None):
        raise ValueError(f"outside the supported PromQL subset: {expression}")
    matchers = _MATCHER.findall(parts["matchers"] or "")
    current = _select(later.samples, parts["name"], matchers)
    values: dict[frozenset[tuple[str, str]], float]
    if parts["func"] is None:
        values = {labels: value for (_, labels), value in current.items()}
    else:
        if earlier is None:
            raise ValueError(f"{parts['func']} needs two scrapes: {expression}")
        window = int(parts["range"]) * _UNITS[parts["unit"]]
        elapsed = later.at - earlier.at
        if not 0 < elapsed <= window:
            raise ValueError(f"scrapes {elapsed:.1f} s apart, outside the {window} s window")
        before = _select(earlier.samples, parts["name"], matchers)
        values = {}
        for (name, labels), value in current.items():
            if (name, labels) not in before:
                continue  # one sample in the window: Prometheus yields nothing either
            start = before[(name, labels)]
            increase = value if value < start else value - start  # a reset starts from 0
            values[labels] = increase if parts["func"] == "increase" else increase / elapsed
    result = list(values.values())
    if parts["agg"] is not None:
        if not result:
            return []
        result = [sum(result) if parts["agg"] == "sum" else max(result)]
    compare = _OPERATORS[parts["op"]]
    bound = float(parts["bound"])
    return [value for value in result if compare(value, bound)]


def fires(expression: str, later: Scrape, earlier: Scrape | None = None) -> bool:
    return bool(evaluate(expression, later, earlier))
