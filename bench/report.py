"""Turns the workloads' figures into the table, the targets' verdicts, the JSON and the chart.

Every figure that has a baseline is shown with it and with the ratio, because on a shared
machine a ratio measured in one run means more than any absolute number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Figures = dict[str, Any]
Results = dict[str, Figures]


@dataclass(frozen=True)
class Row:
    workload: str
    figure: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    status: str  # PASS, MISS, or n/a


def _get(results: Results, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _size_label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1_000}k"


def rows(results: Results) -> list[Row]:
    table: list[Row] = []
    add = table.append
    for c in (1, 64):
        echo = _get(results, "ceiling", f"unary_c{c}")
        if echo:
            add(Row("ceiling", f"echo unary, concurrency {c}", echo["calls_per_second"], "calls/s",
                    note=_cpu_note(echo)))  # fmt: skip
    stream = _get(results, "ceiling", "stream")
    if stream:
        add(Row("ceiling", "echo server stream", stream["messages_per_second"], "msgs/s",
                note=_cpu_note(stream)))  # fmt: skip
    for c in (1, 64):
        created = _get(results, "create", f"unary_c{c}")
        if created:
            add(Row("create", f"CreateMessage, concurrency {c}", created["calls_per_second"],
                    "calls/s", f"echo c{c}",
                    _get(results, "ceiling", f"unary_c{c}", "calls_per_second"),
                    _cpu_note(created)))  # fmt: skip
    for name, figure in E2E_RUNS.items():
        run = _get(results, "e2e", name)
        if run:
            baseline = REDIS_RUNS[E2E_PEERS[name]][0]
            note = f"{run['answered']}/{run['created']} answered; {_e2e_cpu_note(run)}"
            add(Row("e2e", f"end to end, answered, {figure}", run["answered_per_second"],
                    "msgs/s", baseline,
                    _get(results, "redis", E2E_PEERS[name], "answered_per_second"),
                    note))  # fmt: skip
    full = _get(results, "e2e", "full_speed")
    if full:
        _latency_rows(add, "e2e", "create->reply, full speed", full["latency"])
    fixed = _get(results, "e2e", "fixed_rate")
    if fixed:
        rate = f"{fixed['rate_per_second']:g}/s"
        _latency_rows(add, "e2e", f"create->reply at {rate}", fixed["latency"])
        echo_cpu = _get(fixed, "echo", "server_cpu_ms_per_call")
        add(Row("e2e", f"store CPU per answered message at {rate}",
                fixed.get("store_cpu_ms_per_answered"), "ms", f"echo server CPU per call at {rate}",
                echo_cpu, f"store {fixed['store_cpu_percent']:.0f}% of a core, echo "
                f"{_get(fixed, 'echo', 'server_cpu_percent') or 0:.0f}%"))  # fmt: skip
    for name, (label, workload) in REDIS_RUNS.items():
        run = _get(results, "redis", name)
        if run and "skipped" in run:
            add(Row("redis", label, None, "", note=f"skipped: {run['skipped']}"))
        elif run:
            add(Row("redis", f"{label}, answered", run["answered_per_second"], "msgs/s",
                    note=f"{workload}; {_persistence(run['persistence'])}"))  # fmt: skip
            _latency_rows(add, "redis", f"{label}, create->reply", run["latency"])
    pg = results.get("postgres_e2e")
    pg_peer = results.get("postgres_peer")
    for workload, figures in (("postgres_e2e", pg), ("postgres_peer", pg_peer)):
        if figures and "skipped" in figures:
            add(Row(workload, "PostgreSQL run", None, "", note=f"skipped: {figures['skipped']}"))
    if pg and "skipped" not in pg:
        note = (f"{pg['answered']}/{pg['created']} answered; {_e2e_cpu_note(pg)}, PostgreSQL "
                f"{pg['postgres_cpu_percent']:.0f}%; {_durability(pg)}")  # fmt: skip
        add(Row("postgres_e2e", "end to end on PostgreSQL, answered", pg["answered_per_second"],
                "msgs/s", "asyncpg SKIP LOCKED peer",
                _get(results, "postgres_peer", "answered_per_second"),
                note))  # fmt: skip
    if pg_peer and "skipped" not in pg_peer:
        note = (f"{pg_peer['answered']}/{pg_peer['created']} answered; CPU: consumer "
                f"{pg_peer['consumer_cpu_percent']:.0f}%, producers "
                f"{pg_peer['producer_cpu_percent']:.0f}%, PostgreSQL "
                f"{pg_peer['postgres_cpu_percent']:.0f}%; {_durability(pg_peer)}")  # fmt: skip
        add(Row("postgres_peer", "asyncpg SKIP LOCKED peer, answered",
                pg_peer["answered_per_second"], "msgs/s", note=note))  # fmt: skip
    swept = results.get("sweep")
    if swept:
        rows = _size_label(swept["settled_rows"])
        note = (f"{swept['rate_per_second']:g} creates/s; removed "
                f"{swept['rows_removed_per_second']:.0f} rows/s")  # fmt: skip
        add(Row("sweep", f"create p99 during the retention sweep of {rows} settled messages",
                swept["during_sweep"]["p99_ms"], "ms", "without a sweep",
                swept["without_sweep"]["p99_ms"], note))  # fmt: skip
    lookups = results.get("lookup") or {}
    if lookups:
        smallest = min(lookups, key=int)
        for size in sorted(lookups, key=int):
            for key, name in (("get", "GetMessage"), ("mark_processed", "MarkProcessed")):
                add(Row("lookup", f"{name} p50 at {_size_label(int(size))} messages",
                        lookups[size][key]["p50_ms"], "ms", f"at {_size_label(int(smallest))}",
                        lookups[smallest][key]["p50_ms"],
                        f"mean {lookups[size][key]['mean_ms']:.2f} ms"))  # fmt: skip
    slow = results.get("slow")
    if slow:
        capacity = _get(results, "e2e", "full_speed", "answered_per_second")
        note = "" if capacity is None else f"end-to-end capacity this run {capacity:,.0f}/s"
        add(Row("slow", f"200 ms responder, max_in_flight {slow['max_in_flight']}",
                slow["answered_per_second"], "msgs/s", "Little's law bound",
                slow["littles_law_bound_per_second"], note))  # fmt: skip
    old = results.get("oldway") or {}
    if old:
        smallest = min(old, key=int)
        for size in sorted(old, key=int):
            figures = old[size]
            add(Row("oldway", f"prefix scan lookup at {_size_label(int(size))} keys",
                    figures["scan_mean_ms"], "ms", f"at {_size_label(int(smallest))}",
                    old[smallest]["scan_mean_ms"],
                    f"first-page-only misses {figures['first_page_miss_rate']:.0%}, "
                    f"rebuilt key misses {figures['rebuilt_key_miss_rate']:.0%}"))  # fmt: skip
    mem = results.get("memory")
    if mem:
        add(Row("memory", f"store peak RSS, {_size_label(mem['messages'])} messages",
                mem["rss_peak_mb"], "MB", "idle after start", mem["rss_idle_mb"],
                f"streamed {mem['backlog_answered']}/{mem['backlog']} backlog in "
                f"{mem['stream_seconds']:.0f} s"))  # fmt: skip
    _web_rows(add, results)
    return table


def _web_rows(add: Callable[[Row], None], results: Results) -> None:
    """bench.web's figures: PostComment over HTTP/1.1 against CreateMessage over gRPC in the
    same run, and a reply reaching the viewers of one thread."""
    post = _get(results, "web", "PostComment (HTTP/1.1 JSON, via ackbot-web)")
    create = _get(results, "web", "CreateMessage (gRPC, to the store)")
    if post:
        add(Row("web", "PostComment, HTTP/1.1 JSON via ackbot-web", post["calls_per_second"],
                "calls/s", "CreateMessage over gRPC", create and create["calls_per_second"],
                f"p50 {post['p50_ms']} ms, p99 {post['p99_ms']} ms"))  # fmt: skip
    crowd = _get(results, "web", "one thread, many viewers")
    if crowd:
        add(Row("web", f"reply to the last of {crowd['viewers']} viewers",
                crowd["reply_to_last_viewer_ms"], "ms",
                note=f"first {crowd['reply_to_first_viewer_ms']} ms, median "
                f"{crowd['reply_to_median_viewer_ms']} ms"))  # fmt: skip
        add(Row("web", "ackbot-web memory per viewer", crowd["kb_per_viewer"], "kB",
                note=f"RSS {crowd['rss_before_mb']} MB, {crowd['rss_with_viewers_mb']} MB "
                "with the viewers"))  # fmt: skip


# The ackbot end-to-end runs at full speed (bench.workloads.E2E_RUNS), how their producers
# create, and the durable Redis run each is measured against.
E2E_RUNS = {"full_speed": "unary producers", "batched": "batching client"}
E2E_PEERS = {"full_speed": "durable", "batched": "durable_pipelined"}
EMPTY = '""'
# The Redis peer's runs: the label in the table, and what they are.
REDIS_RUNS = {
    "shared": ("Redis Streams, shared", "the Redis at 127.0.0.1:6379 as configured"),
    "durable": ("Redis Streams, durable", "private redis-server, fsync before each answer"),
    "durable_pipelined": (
        "Redis Streams, durable, pipelined",
        "private redis-server, producers pipeline their XADDs",
    ),
}


def _persistence(settings: dict[str, str]) -> str:
    # An empty `save` (no snapshots) shown as it is written in redis.conf.
    return " ".join(f"{name}={value or EMPTY}" for name, value in settings.items())


def _durability(figures: Figures) -> str:
    return f"synchronous_commit={_get(figures, 'durability', 'synchronous_commit')}"


def _e2e_cpu_note(figures: Figures) -> str:
    if "store_cpu_percent" not in figures:
        return ""
    return (
        f"CPU: store {figures['store_cpu_percent']:.0f}%, bot {figures['bot_cpu_percent']:.0f}%, "
        f"producers {figures['producer_cpu_percent']:.0f}%"
    )


def _cpu_note(figures: Figures) -> str:
    note = (
        f"server CPU {figures['server_cpu_percent']:.0f}%, "
        f"client CPU {figures['client_cpu_percent']:.0f}%"
    )
    if figures.get("errors"):
        note += f", {figures['errors']} errors ({figures['first_error']})"
    return note


def _latency_rows(add: Callable[[Row], None], workload: str, what: str, latency: Figures) -> None:
    add(Row(workload, f"{what} p50 / p95 / p99", latency["p50_ms"], "ms",
            note=f"p95 {_ms(latency['p95_ms'])}, p99 {_ms(latency['p99_ms'])}"))  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


# -- targets ------------------------------------------------------------------------------------


def _verdict(target: str, measured: float | None, ok: Callable[[float], bool], fmt: str) -> Verdict:
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return Verdict(target, "not measured", "n/a")
    return Verdict(target, fmt.format(measured), "PASS" if ok(measured) else "MISS")


def _ratio(value: Any, baseline: Any) -> float | None:
    if value is None or not baseline:
        return None
    return float(value) / float(baseline)


def verdicts(results: Results) -> list[Verdict]:
    """The targets of issue 10 (per-message cost), then those of issue 3 still held."""
    found: list[Verdict] = []
    found.append(_verdict(
        "End to end (unary producers) >= 0.5x the durable Redis Streams peer",
        _ratio(_get(results, "e2e", "full_speed", "answered_per_second"),
               _get(results, "redis", "durable", "answered_per_second")),
        lambda r: r >= 0.5, "{:.2f}x"))  # fmt: skip
    batched = _get(results, "e2e", "batched", "answered_per_second")
    pipelined = _get(results, "redis", "durable_pipelined", "answered_per_second")
    target = "End to end (batching client) >= 1.0x the durable peer, pipelined producers"
    if batched is None:
        found.append(Verdict(target, "not measured yet (no batching client)", "n/a"))
    else:
        found.append(_verdict(target, _ratio(batched, pipelined), lambda r: r >= 1.0, "{:.2f}x"))
    found.append(_verdict(
        "CreateMessage at concurrency 64 >= 0.75x the echo ceiling",
        _ratio(_get(results, "create", "unary_c64", "calls_per_second"),
               _get(results, "ceiling", "unary_c64", "calls_per_second")),
        lambda r: r >= 0.75, "{:.2f}x"))  # fmt: skip
    fixed = _get(results, "e2e", "fixed_rate") or {}
    rate = f"{fixed.get('rate_per_second', 200):g}/s"
    found.append(_verdict(
        f"Store CPU per answered message at {rate} <= 4x the echo server's CPU per call",
        _ratio(fixed.get("store_cpu_ms_per_answered"),
               _get(fixed, "echo", "server_cpu_ms_per_call")),
        lambda r: r <= 4, "{:.1f}x"))  # fmt: skip
    latency = fixed.get("latency") or {}
    found.append(_verdict(f"Create-to-reply p50 <= 2 ms at {rate}", latency.get("p50_ms"),
                          lambda v: v <= 2, "{:.2f} ms"))  # fmt: skip
    found.append(_verdict(f"Create-to-reply p99 <= 10 ms at {rate}", latency.get("p99_ms"),
                          lambda v: v <= 10, "{:.2f} ms"))  # fmt: skip
    found.append(_verdict(
        "End to end on PostgreSQL >= 0.5x the asyncpg SKIP LOCKED peer",
        _ratio(_get(results, "postgres_e2e", "answered_per_second"),
               _get(results, "postgres_peer", "answered_per_second")),
        lambda r: r >= 0.5, "{:.2f}x"))  # fmt: skip
    found.append(_verdict(
        "Slow responder >= 95% of the Little's-law bound", _get(results, "slow", "ratio"),
        lambda r: r >= 0.95, "{:.0%}"))  # fmt: skip
    lookups = results.get("lookup") or {}
    for key, name in (("get", "GetMessage"), ("mark_processed", "MarkProcessed")):
        ratio = None
        target = f"{name} at 1M within 1.25x of 1k"
        if lookups:
            smallest, largest = min(lookups, key=int), max(lookups, key=int)
            ratio = _ratio(lookups[largest][key]["p50_ms"], lookups[smallest][key]["p50_ms"])
            if int(largest) != 1_000_000:
                sizes = f"{_size_label(int(largest))} vs {_size_label(int(smallest))}"
                target += f" (this run: {sizes})"
        found.append(_verdict(target, ratio, lambda r: r <= 1.25, "{:.2f}x (p50)"))
    mem = results.get("memory") or {}
    target = "Store RSS <= 200 MB with 1M messages"
    if mem and mem.get("messages") != 1_000_000:
        target += f" (this run: {_size_label(mem['messages'])})"
    found.append(_verdict(target, mem.get("rss_peak_mb"), lambda v: v <= 200, "{:.0f} MB peak"))
    return found


# -- output -------------------------------------------------------------------------------------


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def render(table: list[Row], targets: list[Verdict], errors: dict[str, str]) -> str:
    header = ("workload", "figure", "value", "baseline", "ratio", "note")
    lines = [
        (
            row.workload,
            row.figure,
            _num(row.value, row.unit),
            f"{_num(row.baseline, row.unit)} ({row.baseline_name})" if row.baseline_name else "",
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.note,
        )
        for row in table
    ]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(5)]

    def format_line(cells: tuple[str, ...]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells[:5], widths, strict=True)) + (
            f"  {cells[5]}" if cells[5] else ""
        )

    out = [format_line(header), "  ".join("-" * w for w in widths)]
    out += [format_line(cells) for cells in lines]
    out += ["", "Targets of issues 10 and 3, same-run ratios (a report, not an assertion):"]
    width = max((len(v.target) for v in targets), default=0)
    out += [f"  {v.status:<4}  {v.target.ljust(width)}  {v.measured}" for v in targets]
    if errors:
        out += ["", "Workloads that failed:"]
        out += [f"  {name}: {message.splitlines()[0]}" for name, message in errors.items()]
    return "\n".join(out)


def document(meta: Figures, settings: Figures, results: Results, errors: dict[str, str]) -> Figures:
    return {
        "meta": meta,
        "settings": settings,
        "results": results,
        "errors": errors,
        "table": [{**asdict(row), "ratio": row.ratio} for row in rows(results)],
        "targets": [asdict(v) for v in verdicts(results)],
    }


def chart(results: Results, path: Path, title: str) -> None:
    """Four panels: throughput against its baselines, lookup cost by size, latency
    percentiles, and the store's RSS over the memory run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(14, 10))
    figure.suptitle(title)
    _throughput_panel(axes[0][0], results)
    _lookup_panel(axes[0][1], results)
    _latency_panel(axes[1][0], results)
    _memory_panel(axes[1][1], results)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _throughput_panel(axis: Any, results: Results) -> None:
    pairs = [
        ("c1", _get(results, "ceiling", "unary_c1", "calls_per_second"),
         _get(results, "create", "unary_c1", "calls_per_second"), "echo", "Create"),
        ("c64", _get(results, "ceiling", "unary_c64", "calls_per_second"),
         _get(results, "create", "unary_c64", "calls_per_second"), "echo", "Create"),
        ("end to end", _get(results, "redis", "durable", "answered_per_second"),
         _get(results, "e2e", "full_speed", "answered_per_second"), "durable Redis", "ackbot"),
        ("on PostgreSQL", _get(results, "postgres_peer", "answered_per_second"),
         _get(results, "postgres_e2e", "answered_per_second"), "asyncpg", "ackbot"),
        ("200 ms responder", _get(results, "slow", "littles_law_bound_per_second"),
         _get(results, "slow", "answered_per_second"), "Little's bound", "ackbot"),
    ]  # fmt: skip
    labels = []
    for index, (group, baseline, value, base_name, name) in enumerate(pairs):
        labels.append(f"{group}\n{base_name} | {name}")
        axis.bar(index - 0.2, baseline or 0, 0.4, color="#bbbbbb")
        axis.bar(index + 0.2, value or 0, 0.4, color="#3b75af")
        ratio = _ratio(value, baseline)
        if ratio is not None:
            axis.annotate(f"{ratio:.0%}", (index + 0.2, value), ha="center", va="bottom")
    axis.set_xticks(range(len(pairs)), labels, fontsize=8)
    axis.set_ylabel("per second")
    axis.set_title("Throughput vs baseline (grey), ratio on top")


def _lookup_panel(axis: Any, results: Results) -> None:
    lookups = results.get("lookup") or {}
    old = results.get("oldway") or {}
    for key, name in (("get", "GetMessage p50"), ("mark_processed", "MarkProcessed p50")):
        sizes = sorted(lookups, key=int)
        axis.plot([int(s) for s in sizes], [lookups[s][key]["p50_ms"] for s in sizes], "o-",
                  label=name)  # fmt: skip
    sizes = sorted(old, key=int)
    axis.plot([int(s) for s in sizes], [old[s]["scan_mean_ms"] for s in sizes], "s--",
              color="#aa3333", label="old way: prefix scan (in-process)")  # fmt: skip
    if lookups or old:
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.legend()
    axis.set_xlabel("stored messages")
    axis.set_ylabel("ms per lookup")
    axis.set_title("Lookup cost vs size")


def _latency_panel(axis: Any, results: Results) -> None:
    series = [
        ("ackbot full speed", _get(results, "e2e", "full_speed", "latency")),
        ("ackbot 200/s", _get(results, "e2e", "fixed_rate", "latency")),
        ("durable Redis full speed", _get(results, "redis", "durable", "latency")),
    ]
    drawn = 0
    for offset, (name, latency) in enumerate(series):
        if not latency or latency.get("p50_ms") is None:
            continue
        # A log axis cannot show zero or a negative latency (a reply committed before the
        # producer saw its create return): drawn at 0.01 ms, the table has the true value.
        values = [max(latency[k], 0.01) for k in ("p50_ms", "p95_ms", "p99_ms")]
        axis.bar([i + (offset - 1) * 0.27 for i in range(3)], values, 0.27, label=name)
        drawn += 1
    axis.axhline(2, color="#888888", linestyle=":", linewidth=1)
    axis.axhline(10, color="#888888", linestyle=":", linewidth=1)
    axis.set_xticks(range(3), ["p50", "p95", "p99"])
    if drawn:
        axis.set_yscale("log")
        axis.legend()
    axis.set_ylabel("ms, CreateMessage returned -> reply committed")
    axis.set_title("End-to-end latency (dotted: the 2 ms and 10 ms targets at 200/s)")


def _memory_panel(axis: Any, results: Results) -> None:
    mem = results.get("memory") or {}
    series = mem.get("rss_series") or []
    if series:
        axis.plot([t for t, _ in series], [mb for _, mb in series])
        axis.axhline(200, color="#aa3333", linestyle=":", label="200 MB target")
        axis.legend()
    axis.set_xlabel("seconds")
    axis.set_ylabel("store RSS, MB")
    axis.set_title(f"Store RSS, {mem.get('messages', 0):,} messages, streaming the backlog")
