"""bench/report.py: medians, ratios, their reading, and the Markdown of BENCHMARKS.md (pure
functions; nothing is timed here)."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest

_PATH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "report.py"
_SPEC = importlib.util.spec_from_file_location("bench_report", _PATH)
report = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_report"] = report  # dataclasses look their module up there
_SPEC.loader.exec_module(report)


def test_median_and_ratio():
    assert report.median([3.0, 1.0, 2.0]) == 2.0
    assert report.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        report.median([])
    assert report.ratio(1.0, 4.0) == 0.25
    assert report.ratio(1.0, 0.0) == math.inf
    assert math.isnan(report.ratio(0.0, 0.0))


def test_row_takes_medians_and_the_shorter_count():
    r = report.row("f", [1.0, 9.0, 2.0], [4.0, 4.0], peer_name="p", unit="s", better="lower")
    assert (r.ours, r.peer, r.runs) == (2.0, 4.0, 2)
    assert r.ratio == 0.5  # always ours / peer
    with pytest.raises(ValueError, match="better"):
        report.Row("f", 1.0, 2.0, "p", "s", "faster", 1)


@pytest.mark.parametrize(
    "ours,peer,unit,better,expected",
    [
        (1.0, 2.0, "s", "lower", "2.00x faster"),
        (3.0, 1.5, "s", "lower", "2.00x slower"),
        (10.0, 4.0, "speakers/min", "higher", "2.50x more"),
        (1.0, 4.0, "speakers/min", "higher", "4.00x fewer"),
        (1.0, 8.0, "bytes", "lower", "8.00x smaller"),
        (0.0, 1.0, "s", "lower", "-"),
    ],
)
def test_reading_follows_the_direction_of_the_figure(ours, peer, unit, better, expected):
    r = report.Row("f", ours, peer, "p", unit, better, 3)
    assert report.reading(r) == expected


def test_table_and_document():
    rows = (
        report.Row("quantise | 64", 0.5, 2.0, "bnb", "s", "lower", 7, note="n"),
        report.Row("bytes", 22_249_088, 151_041_024, "fp32", "bytes", "lower", 1),
        report.Row("step", 2.0, 1.0, "f32", "s", "lower", 3, limit=0.514, limit_name="9 GFLOP/s"),
    )
    table = report.table(rows, "python bench/x.py --a 1")
    lines = table.splitlines()
    assert len(lines) == 5 and lines[1] == "|---" * 8 + "|"
    assert all(line.count(" | ") == 7 for line in (lines[0], *lines[2:]))
    assert "quantise \\| 64 (s); n" in lines[2]  # pipes in cells are escaped
    assert (
        "| 0.5 | 2 (bnb) | 0.250 | 4.00x faster | - | 7 | `python bench/x.py --a 1` |" in lines[2]
    )
    assert "22,249,088" in lines[3] and "6.79x smaller" in lines[3]
    assert "| 2.00x slower | 51% of 9 GFLOP/s | 3 |" in lines[4]  # the machine-limit column

    ok = report.Section("NF4", "python bench/x.py", rows, ("setting line",), seconds=3.2)
    failed = report.Section("decode", "python bench/y.py", (), error="exit status 1")
    doc = report.document([ok, failed], {"CPU": "test cpu", "cores": "2"}, "python run_all.py")
    assert doc.startswith("# Benchmarks\n") and doc.endswith("\n")
    assert "`python run_all.py`" in doc and "| CPU | test cpu |" in doc
    assert "## NF4" in doc and "- setting line" in doc and "(3 s)" in doc
    assert "**Not measured**: exit status 1" in doc
    assert doc.index("## NF4") < doc.index("## decode")


def test_dump_and_load_round_trip(tmp_path):
    rows = [report.Row("f", 1.0, 2.0, "p", "s", "lower", 3, note="x")]
    report.dump(tmp_path / "r.json", rows, ["a", "b"])
    assert report.load(tmp_path / "r.json") == (tuple(rows), ("a", "b"))


def test_machine_info_names_versions_and_device():
    info = report.machine_info({"extra": "1"})
    assert info["cores (os.cpu_count)"].isdigit()
    assert info["jax"] != "not installed" and "JAX device" in info and info["extra"] == "1"
