"""Rows of side-by-side measurements and the Markdown of BENCHMARKS.md (pure functions).

A row is one figure measured for us and for a peer in the same run: both values are medians over
the same number of runs, and `ratio` is always ours / peer. Whether above 1 is good depends on
the figure (`better`: "higher" for throughput, "lower" for times and bytes); `reading` says it in
words ("2.10x faster", "7.75x smaller").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
from collections.abc import Iterable, Sequence

BETTER = ("higher", "lower")


@dataclasses.dataclass(frozen=True)
class Row:
    """One figure: ours against a peer, each the median of `runs` measurements.

    Attributes:
      figure: what is measured, with its setting ("quantise 2048x2048, s").
      ours, peer: medians (same unit); peer_name: who the peer is.
      unit: "s", "speakers/min", "bytes", ...; better: "higher" or "lower".
      runs: how many measurements each median is over; note: anything the reader needs.
      limit: our figure as a fraction of the machine's own limit measured in the same run (model
        FLOP/s over a matmul's, or bytes/s over a copy's); 0 = not rated (latency-bound rows).
      limit_name: what that limit is ("157 GFLOP/s float32 matmul").
    """

    figure: str
    ours: float
    peer: float
    peer_name: str
    unit: str
    better: str
    runs: int
    note: str = ""
    limit: float = 0.0
    limit_name: str = ""

    def __post_init__(self):
        if self.better not in BETTER:
            raise ValueError(f"better must be one of {BETTER}, got {self.better!r}")

    @property
    def ratio(self) -> float:
        return ratio(self.ours, self.peer)


def median(values: Iterable[float]) -> float:
    """The median of a non-empty sequence (the middle pair's mean for even counts)."""
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def ratio(ours: float, peer: float) -> float:
    """ours / peer; inf when the peer is 0 and we are not, nan when both are."""
    if peer == 0:
        return math.nan if ours == 0 else math.inf
    return ours / peer


def row(
    figure: str,
    ours: Sequence[float],
    peer: Sequence[float],
    *,
    peer_name: str,
    unit: str,
    better: str,
    note: str = "",
    limit: float = 0.0,
    limit_name: str = "",
) -> Row:
    """A row from raw measurements: medians of `ours` and `peer` (runs = the shorter count)."""
    return Row(
        limit=limit,
        limit_name=limit_name,
        figure=figure,
        ours=median(ours),
        peer=median(peer),
        peer_name=peer_name,
        unit=unit,
        better=better,
        runs=min(len(ours), len(peer)),
        note=note,
    )


def reading(r: Row) -> str:
    """The ratio in words, from our side: '2.10x faster', '1.30x slower', '7.75x smaller'."""
    q = r.ratio
    if not math.isfinite(q) or q <= 0:
        return "-"
    size = r.unit in ("bytes", "bits/weight", "MiB", "fraction")
    good, bad = ("smaller", "larger") if size else ("faster", "slower")
    if r.unit.endswith("/min") or r.unit.endswith("/s"):
        good, bad = "more", "fewer"
    gain = q if r.better == "higher" else 1.0 / q
    return f"{gain:.2f}x {good}" if gain >= 1 else f"{1.0 / gain:.2f}x {bad}"


def limit_cell(r: Row) -> str:
    """'51% of 157 GFLOP/s float32 matmul', or '-' for a row that is not rated."""
    if not r.limit or not math.isfinite(r.limit):
        return "-"
    return f"{r.limit:.0%} of {r.limit_name}" if r.limit_name else f"{r.limit:.0%}"


def fmt(x: float) -> str:
    """A compact number: 4 significant digits, thousands grouped for big integers."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Row], command: str) -> str:
    """A Markdown table: figure, ours, peer, ours/peer, reading, of the machine's limit,
    median of N, command."""
    head = "| figure | ours | peer | ours / peer | reading | ours: of machine limit | median of | command |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        figure = f"{r.figure} ({r.unit})" + (f"; {r.note}" if r.note else "")
        cells = [
            figure,
            fmt(r.ours),
            f"{fmt(r.peer)} ({r.peer_name})",
            f"{r.ratio:.3f}",
            reading(r),
            limit_cell(r),
            str(r.runs),
            f"`{command}`",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Section:
    """One benchmark's result: its title, the command run, its rows, setting lines, and an
    error message when it failed (then rows may be empty)."""

    title: str
    command: str
    rows: tuple[Row, ...]
    setting: tuple[str, ...] = ()
    error: str = ""
    seconds: float = 0.0


def document(sections: Sequence[Section], machine: dict[str, str], command: str) -> str:
    """The whole BENCHMARKS.md."""
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` (one run, every section on the same machine). Every figure is "
        "measured for us and for a peer side by side in that run; both columns are medians over "
        "the same number of runs and `ours / peer` is their ratio (for times and bytes below 1 "
        "is better, for throughputs above 1). Absolute times depend on the machine and on "
        "whatever else ran on it; read the ratios.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in machine.items()]
    for s in sections:
        out += ["", f"## {s.title}", "", f"Command: `{s.command}` ({s.seconds:.0f} s)", ""]
        out += [f"- {line}" for line in s.setting]
        if s.setting:
            out.append("")
        if s.error:
            out += [f"**Not measured**: {_cell(s.error)}", ""]
        if s.rows:
            out += [table(s.rows, s.command), ""]
    return "\n".join(out).rstrip() + "\n"


def machine_info(extra: dict[str, str] | None = None) -> dict[str, str]:
    """CPU model, cores, load, OS and library versions (the ones installed), JAX's device."""
    info = {"CPU": _cpu_model(), "cores (os.cpu_count)": str(os.cpu_count())}
    if hasattr(os, "getloadavg"):
        info["load average at start (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    info["OS"] = f"{platform.system()} {platform.release()} {platform.machine()}"
    info["Python"] = platform.python_version()
    for name in ("jax", "jaxlib", "torch", "transformers", "bitsandbytes", "peft", "ctranslate2"):
        info[name] = _version(name)
    try:
        import jax

        d = jax.devices()[0]
        info["JAX device"] = f"{d.platform}: {d.device_kind} x {jax.device_count()}"
    except Exception as e:  # a report still helps without it
        info["JAX device"] = f"unknown ({e})"
    info |= extra or {}
    return info


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit(
    rows: Sequence[Row], setting: Sequence[str], command: str, json_path: str | None = None
) -> None:
    """What a bench script ends with: its setting and table on stdout, the rows as JSON too
    when `json_path` is given (for bench/run_all.py)."""
    print("\n".join(f"# {s}" for s in setting))
    print(table(rows, command))
    if json_path:
        dump(json_path, rows, setting)


def dump(path: str | os.PathLike, rows: Sequence[Row], setting: Sequence[str] = ()) -> None:
    """Writes a section's rows and setting lines as JSON (what each bench script hands back)."""
    data = {"rows": [dataclasses.asdict(r) for r in rows], "setting": list(setting)}
    pathlib.Path(path).write_text(json.dumps(data, indent=1))


def load(path: str | os.PathLike) -> tuple[tuple[Row, ...], tuple[str, ...]]:
    """Reads what `dump` wrote."""
    data = json.loads(pathlib.Path(path).read_text())
    return tuple(Row(**r) for r in data["rows"]), tuple(data["setting"])
