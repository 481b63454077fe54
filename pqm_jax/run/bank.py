"""The adapted speakers' bank on disk: written a chunk at a time, read a page at a time.

Each finished stage-3 chunk is one folder (names in `workdir`):

    adapters.npy   [speakers of the chunk, P]: a speaker's adapters flattened into one row
                   (leaves in tree order), so one speaker is one contiguous read
    chunk.json     the speakers, their results, the leaf layout, and size + SHA-256 of the array

and adds one line to `stage3/manifest.jsonl` (a header line first, "complete" last), so the
cost of finishing a chunk does not grow with the number of speakers before it.

`PagedBank` serves inference: it memory-maps the chunk arrays and copies out only the rows of
the speakers asked for, keeping the most recently used in a bounded cache (as S-LoRA and
LoRAX page adapters), so decoding a batch needs memory for that batch's speakers only.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from pqm_jax import checkpoint, jsonio, multihost
from pqm_jax.quant import tree as qtree
from pqm_jax.run import workdir as workdir_lib

FORMAT = 2


class DamagedChunk(checkpoint.CorruptCheckpointError):
    """A bank chunk whose files are missing or do not match its record."""


def layout(template: Any) -> list[dict[str, Any]]:
    """Path, shape and dtype of every leaf of one speaker's adapters, in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(template)[0]
    return [
        {"path": qtree.path_str(p), "shape": list(np.shape(x)), "dtype": np.dtype(x.dtype).name}
        for p, x in leaves
    ]


def _dtype(lay: list[dict[str, Any]]) -> np.dtype:
    return np.result_type(*[np.dtype(leaf["dtype"]) for leaf in lay])


def flatten(stacked: Any, n: int) -> np.ndarray:
    """Rows [n, P] of the first `n` speakers of a host bank tree [C, ...]."""
    leaves = [np.asarray(x)[:n] for x in jax.tree.leaves(stacked)]
    dtype = np.result_type(*[x.dtype for x in leaves])
    return np.concatenate([x.reshape(n, -1).astype(dtype) for x in leaves], axis=1)


def unflatten(rows: np.ndarray, template: Any) -> Any:
    """The bank tree [B, ...] (numpy) of rows [B, P] laid out as `template`."""
    leaves, treedef = jax.tree.flatten(template)
    out, start = [], 0
    for x in leaves:
        size = int(np.prod(np.shape(x), dtype=np.int64))
        part = rows[:, start : start + size].reshape(rows.shape[0], *np.shape(x))
        out.append(part.astype(x.dtype, copy=False))
        start += size
    if start != rows.shape[1]:
        raise ValueError(f"bank rows hold {rows.shape[1]} values, the adapters {start}")
    return jax.tree.unflatten(treedef, out)


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_chunk(
    paths: workdir_lib.Workdir,
    index: int,
    rows: np.ndarray,
    speakers: Sequence[str],
    results: list[dict[str, Any]],
    template: Any,
) -> None:
    """Writes chunk `index` (rows [len(speakers), P]) atomically: into a hidden folder, then
    renamed. Process 0 writes; the others wait for it."""
    final = paths.chunk(index)
    if multihost.primary():
        if rows.shape[0] != len(speakers):
            raise ValueError(f"{rows.shape[0]} rows for {len(speakers)} speakers")
        partial = final.with_name(f".{final.name}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        arrays = partial / workdir_lib.CHUNK_ARRAYS
        np.save(arrays, np.ascontiguousarray(rows))
        _fsync(arrays)
        record = {
            "format": FORMAT,
            "chunk": index,
            "speakers": list(speakers),
            "results": results,
            "layout": layout(template),
            "bytes": arrays.stat().st_size,
            "sha256": checkpoint.sha256(arrays),
        }
        checkpoint.write_atomic(partial / workdir_lib.CHUNK_RECORD, json.dumps(record, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    multihost.barrier(f"pqm-bank-chunk-{index}")


def read_record(paths: workdir_lib.Workdir, index: int, *, verify: bool = True) -> dict:
    """Chunk `index`'s record; with `verify`, its array checked against size and checksum.

    Raises:
      DamagedChunk: naming the missing, resized or altered file.
    """
    folder = paths.chunk(index)
    record_path = folder / workdir_lib.CHUNK_RECORD
    arrays = folder / workdir_lib.CHUNK_ARRAYS
    if not record_path.is_file():
        raise DamagedChunk(f"bank file {record_path} is missing")
    try:
        record = jsonio.read_object(record_path, what="a bank chunk's record")
        size, digest = record["bytes"], record["sha256"]
    except (jsonio.DamagedFile, KeyError, TypeError) as e:
        raise DamagedChunk(f"bank file {record_path} is damaged ({e})") from None
    if not arrays.is_file():
        raise DamagedChunk(f"bank file {arrays} is missing")
    if arrays.stat().st_size != size:
        raise DamagedChunk(f"bank file {arrays} has {arrays.stat().st_size} bytes, expected {size}")
    if verify and checkpoint.sha256(arrays) != digest:
        raise DamagedChunk(f"bank file {arrays} does not match its checksum")
    return record


def is_valid(paths: workdir_lib.Workdir, index: int) -> bool:
    try:
        read_record(paths, index)
    except DamagedChunk:
        return False
    return True


# -- the manifest: one line per event, appended ------------------------------------------


def read_lines(paths: workdir_lib.Workdir) -> list[dict[str, Any]]:
    """The manifest's records up to the first unreadable line (a write cut short by a kill)."""
    path = paths.manifest
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
    return out


def write_lines(paths: workdir_lib.Workdir, records: list[dict[str, Any]]) -> None:
    """Replaces the manifest with `records` (at the start of stage 3 only; process 0)."""
    if multihost.primary():
        paths.manifest.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in records)
        checkpoint.write_atomic(paths.manifest, text)


def append_line(paths: workdir_lib.Workdir, record: dict[str, Any]) -> None:
    """Adds one record to the manifest (process 0), flushed to disk."""
    if multihost.primary():
        with open(paths.manifest, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def manifest(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest as one dict: the header's fields, "speakers" {name: result row + chunk and
    row}, "complete" (the last record says so). A chunk's later line supersedes an earlier
    one (a chunk redone after damage)."""
    if not records:
        return {}
    out = {k: v for k, v in records[0].items() if k != "header"}
    speakers: dict[str, Any] = {}
    for rec in records[1:]:
        if "chunk" not in rec:
            continue
        for row_index, row in enumerate(rec["speakers"]):
            speakers[row["speaker"]] = row | {"chunk": rec["chunk"], "row": row_index}
    out["speakers"] = speakers
    out["complete"] = bool(records[-1].get("complete"))
    return out


# -- inference: a page of speakers at a time ---------------------------------------------


class PagedBank:
    """The adapters of any adapted speaker, read from the chunk arrays on request.

    `gather(names)` returns the bank tree [len(names), ...] (numpy) for those speakers only;
    rows come from memory-mapped chunk files and the `cache_speakers` most recently used stay
    in memory. Memory is bounded by the cache and the batch, whatever the number of speakers.
    """

    def __init__(self, paths: workdir_lib.Workdir, template: Any, *, cache_speakers: int = 256):
        self.paths = paths
        self.template = template
        self.cache_speakers = max(0, int(cache_speakers))
        self.index = manifest(read_lines(paths)).get("speakers", {})
        self._width = sum(int(np.prod(leaf["shape"])) for leaf in layout(template))
        self._dtype = _dtype(layout(template))
        self._maps: dict[int, np.ndarray] = {}
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.reads = 0  # rows read from disk (cache misses)

    @property
    def speakers(self) -> list[str]:
        return sorted(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def _map(self, chunk: int) -> np.ndarray:
        if chunk not in self._maps:
            record = read_record(self.paths, chunk, verify=False)
            if record["layout"] != layout(self.template):
                raise ValueError(
                    f"{self.paths.chunk(chunk)} holds adapters of another shape than this run's "
                    "(rank, targets or model changed?)"
                )
            rows = np.load(self.paths.chunk(chunk) / workdir_lib.CHUNK_ARRAYS, mmap_mode="r")
            if rows.ndim != 2 or rows.shape[1] != self._width:
                raise DamagedChunk(f"{self.paths.chunk(chunk)}: rows of shape {rows.shape}")
            self._maps[chunk] = rows
        return self._maps[chunk]

    def row(self, name: str) -> np.ndarray:
        """One speaker's flattened adapters [P]."""
        hit = self._cache.get(name)
        if hit is not None:
            self._cache.move_to_end(name)
            return hit
        where = self.index.get(name)
        if where is None:
            shown = ", ".join(self.speakers[:8]) + (" ..." if len(self) > 8 else "")
            raise KeyError(f"speaker {name!r} not adapted; adapted ({len(self)}): {shown}")
        value = np.array(self._map(where["chunk"])[where["row"]])  # a copy, off the map
        self.reads += 1
        if self.cache_speakers:
            self._cache[name] = value
            while len(self._cache) > self.cache_speakers:
                self._cache.popitem(last=False)
        return value

    def gather(self, names: Sequence[str]) -> Any:
        """The bank tree [len(names), ...] of these speakers (repeats allowed), numpy."""
        rows = np.empty((len(names), self._width), self._dtype)
        for i, name in enumerate(names):
            rows[i] = self.row(name)
        return unflatten(rows, self.template)

    def one(self, name: str) -> Any:
        """One speaker's adapters (no leading axis)."""
        return jax.tree.map(lambda x: x[0], self.gather([name]))


class StackedBank:
    """A bank already in memory (tree [S, ...] and its speaker names) behind `PagedBank`'s
    `gather`, for small runs, tests and adapters made in the same process."""

    def __init__(self, stacked: Any, names: Sequence[str]):
        self.stacked = stacked
        self.position = {n: i for i, n in enumerate(names)}
        if len(self.position) != len(names):
            raise ValueError("StackedBank: speaker names repeat")

    @property
    def speakers(self) -> list[str]:
        return sorted(self.position)

    def __len__(self) -> int:
        return len(self.position)

    def __contains__(self, name: str) -> bool:
        return name in self.position

    def gather(self, names: Sequence[str]) -> Any:
        missing = [n for n in names if n not in self.position]
        if missing:
            raise KeyError(f"speakers {sorted(set(missing))} are not in the bank")
        idx = np.asarray([self.position[n] for n in names], np.int64)
        return jax.tree.map(lambda x: np.asarray(x)[idx], self.stacked)

    def one(self, name: str) -> Any:
        return jax.tree.map(lambda x: x[0], self.gather([name]))
