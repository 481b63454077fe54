"""Training metrics: one JSON object a line, mirrored as TensorBoard scalars, plus a plot.

`metrics.jsonl` is the record (append-only; a resumed run appends, so a step replayed after a
restart appears twice with a larger `attempt`). The TensorBoard event file is written by a
small self-contained encoder (TFRecord framing, CRC-32C, the three protobuf messages a scalar
needs), so neither TensorFlow nor tensorboard is required to write it; `tensorboard --logdir
WORKDIR/tb` reads it.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from pqm_jax.run import workdir as workdir_lib


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int | None = None, *, summary: bytes = b"", version="") -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step is not None:
        msg += _varint(2 << 3) + _varint(step)
    if version:
        msg += _field_bytes(3, version.encode())
    if summary:
        msg += _field_bytes(5, summary)
    return msg


def _scalar_summary(values: Mapping[str, float]) -> bytes:
    out = b""
    for tag, v in values.items():
        value = _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v)
        out += _field_bytes(1, value)
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked(crc32c(header)))
        + data
        + struct.pack("<I", _masked(crc32c(data)))
    )


class EventWriter:
    """Scalars to a TensorBoard event file `folder/events.out.tfevents.<time>.<host>`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = folder / name
        self._file = open(self.path, "ab")
        self._file.write(_record(_event(time.time(), version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if math.isfinite(float(v))}
        if finite:
            event = _event(time.time(), step, summary=_scalar_summary(finite))
            self._file.write(_record(event))
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_events(path: str | os.PathLike) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}) of every scalar event in an event file, checking both CRCs."""
    data = pathlib.Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (hcrc,) = struct.unpack_from("<I", data, pos + 8)
        if _masked(crc32c(data[pos : pos + 8])) != hcrc:
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12 : pos + 12 + length]
        (dcrc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if _masked(crc32c(body)) != dcrc:
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        pos += 16 + length
        fields = _parse(body)
        if 5 in fields:
            values = {}
            for value in _parse_all(fields[5][0], 1):
                v = _parse(value)
                values[v[1][0].decode()] = struct.unpack("<f", v[2][0])[0]
            out.append((fields.get(2, [0])[0], values))
    return out


def _parse_all(msg: bytes, number: int) -> list[bytes]:
    return _parse(msg).get(number, [])


def _parse(msg: bytes) -> dict[int, list[Any]]:
    fields: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(msg):
        key, pos = _read_varint(msg, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(msg, pos)
        elif wire == 1:
            value, pos = msg[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = msg[pos : pos + 4], pos + 4
        elif wire == 2:
            n, pos = _read_varint(msg, pos)
            value, pos = msg[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _read_varint(msg: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = msg[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


class MetricsWriter:
    """Writes `workdir/metrics.jsonl` and `workdir/tb/` (only on process 0)."""

    def __init__(self, workdir: str | os.PathLike | workdir_lib.Workdir, *, enabled: bool = True):
        self.enabled = enabled
        wd = workdir_lib.Workdir.of(workdir)
        self.path = wd.metrics
        self._events: EventWriter | None = None
        self.attempt = 0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.attempt = 1 + sum(1 for r in read_jsonl(self.path) if r.get("event") == "start")
            torn = self.path.is_file() and not self.path.read_bytes().endswith(b"\n")
            self._file = open(self.path, "a", encoding="utf-8")
            if torn and self.path.stat().st_size:  # a run killed mid-line: start a fresh one
                self._file.write("\n")
            self._events = EventWriter(wd.tensorboard)

    def write(self, stage: str, step: int, values: Mapping[str, Any], **extra: Any) -> None:
        """One JSON line {stage, step, attempt, time, **values, **extra}; finite float values
        also become TensorBoard scalars `stage/name`."""
        if not self.enabled:
            return
        row = {"stage": stage, "step": int(step), "attempt": self.attempt, "time": time.time()}
        row |= {k: _plain(v) for k, v in {**values, **extra}.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {
            f"{stage}/{k}": float(v)
            for k, v in values.items()
            if isinstance(_plain(v), (int, float)) and not isinstance(v, bool)
        }
        if self._events is not None and scalars:
            self._events.scalars(int(step), scalars)

    def event(self, name: str, **fields: Any) -> None:
        """A non-metric line, e.g. {"event": "start"} or a finished chunk."""
        if self.enabled:
            row = {"event": name, "attempt": self.attempt, "time": time.time()}
            row |= {k: _plain(v) for k, v in fields.items()}
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._events is not None:
                self._events.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every well-formed line of a metrics file (a torn last line is ignored)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot(
    workdir: str | os.PathLike | workdir_lib.Workdir, out: str | os.PathLike | None = None
) -> pathlib.Path:
    """Loss and accuracy curves of a run as a PNG (default `workdir/metrics.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    wd = workdir_lib.Workdir.of(workdir)
    rows = read_jsonl(wd.metrics)
    stages = sorted({r["stage"] for r in rows if "stage" in r})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("loss", "dev_accuracy")):
        ax.set_title(f"{key} (stage 3: per speaker, at its own steps)")
        ax.set_xlabel("step")
        for stage in stages:
            if stage == "stage3" and key == "loss":
                continue  # the chunk-level mean; per-speaker losses are plotted instead
            pts = [(r["step"], r[key]) for r in rows if r.get("stage") == stage and key in r]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), ".-", label=stage, linewidth=1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    out = pathlib.Path(out or wd.metrics_plot)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
