"""Orbax checkpoints that are committed atomically and verified before they are trusted.

A checkpoint is one folder holding named items (an orbax composite): pytrees of arrays (the
quantised base, adapters, a bank of speakers' adapters, optimiser state) and small JSON
documents (data position, step, metrics). Saving writes everything into `.NAME.partial`, adds
`pqm_integrity.json` (size and SHA-256 of every file), and only then renames the folder to its
final name, so a run killed at any moment leaves either the previous checkpoint or the new one,
never a half-written folder under a valid name.

Loading re-hashes the files first. A missing, truncated or altered file (a torn copy, a disk
fault, a hand edit) raises `CorruptCheckpointError` naming it; `Series.restore_latest` then warns
(`CheckpointWarning`) and falls back to the previous good checkpoint. Items are restored
independently: loading one speaker of a bank reads (and verifies) that speaker's files only.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import pqm_jax
from pqm_jax import multihost

INTEGRITY = "pqm_integrity.json"
_FORMAT = 1
_STEP = re.compile(r"^step_(\d{8,})$")


class CheckpointWarning(pqm_jax.PQMWarning):
    """A checkpoint was found damaged and skipped."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint folder whose files do not match its integrity record."""


@dataclasses.dataclass(frozen=True)
class Json:
    """A JSON item to save (`value`), or, as a restore target, a request for one."""

    value: Any = None


_primary = multihost.primary
_sync = multihost.barrier


def sha256(path: pathlib.Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record(folder: pathlib.Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != INTEGRITY:
            rel = path.relative_to(folder).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return files


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` through a synced temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _args(items: Mapping[str, Any], restore: bool) -> ocp.args.Composite:
    out = {}
    for name, value in items.items():
        if isinstance(value, Json):
            out[name] = ocp.args.JsonRestore() if restore else ocp.args.JsonSave(value.value)
        else:
            out[name] = (ocp.args.StandardRestore if restore else ocp.args.StandardSave)(value)
    return ocp.args.Composite(**out)


def save(path: str | os.PathLike, items: Mapping[str, Any]) -> pathlib.Path:
    """Saves `items` ({name: pytree or `Json`}) as the checkpoint folder `path`, atomically.

    Raises:
      FileExistsError: if `path` already exists (checkpoints are never overwritten in place).
      OSError: ENOSPC naming `path` when the disk is full (the partial folder is left to be
        cleaned by the next save).
    """
    path = pathlib.Path(path).absolute()  # orbax refuses relative paths (a relative --workdir)
    if path.exists():
        raise FileExistsError(f"checkpoint {path} already exists")
    for name in items:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"checkpoint item name {name!r} must be [A-Za-z0-9_]+")
    partial = path.with_name(f".{path.name}.partial")
    if _primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():  # left by a run killed while saving
            shutil.rmtree(partial)
        _check_space(path, items)
    _sync(f"pqm-ckpt-clean-{path.name}")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(partial, args=_args(items, restore=False))
    except Exception as e:  # orbax reports a full disk as ValueError("RESOURCE_EXHAUSTED ...")
        if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path)) from e
        raise
    if _primary():
        record = {"format": _FORMAT, "items": sorted(items), "files": _record(partial)}
        write_atomic(partial / INTEGRITY, json.dumps(record, indent=1))
        os.replace(partial, path)
        _fsync_dir(path.parent)
    _sync(f"pqm-ckpt-commit-{path.name}")
    return path


def _check_space(path: pathlib.Path, items: Mapping[str, Any]) -> None:
    """ENOSPC before a save that cannot fit (orbax would fail half-way, from its writer
    threads): the arrays' bytes plus a margin for metadata."""
    arrays = [x for k, v in items.items() if not isinstance(v, Json) for x in jax.tree.leaves(v)]
    need = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in arrays)
    need = int(need * 1.05) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device (a {need / 1e6:.1f} MB checkpoint, {free / 1e6:.1f} MB free)",
            os.fspath(path),
        )


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify(path: str | os.PathLike, items: Iterable[str] | None = None) -> list[str]:
    """Checks the files of `items` (default: all) against the integrity record.

    Returns the item names the checkpoint holds.

    Raises:
      CorruptCheckpointError: naming the first missing, resized or altered file.
    """
    path = pathlib.Path(path)
    record_path = path / INTEGRITY
    if not path.is_dir():
        raise CorruptCheckpointError(f"checkpoint folder {path} does not exist")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files, held = record["files"], record["items"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"{record_path} is missing or unreadable ({e})") from e
    wanted = held if items is None else list(items)
    missing = sorted(set(wanted) - set(held))
    if missing:
        raise KeyError(f"checkpoint {path} has no item(s) {missing}; it holds {held}")
    for rel, info in files.items():
        top = rel.split("/", 1)[0]
        if "/" in rel and top in held and top not in wanted:
            continue  # another item's file: not read, not checked
        f = path / rel
        if not f.is_file():
            raise CorruptCheckpointError(f"checkpoint file {f} is missing")
        if f.stat().st_size != info["size"]:
            raise CorruptCheckpointError(
                f"checkpoint file {f} has {f.stat().st_size} bytes, expected {info['size']}"
            )
        if sha256(f) != info["sha256"]:
            raise CorruptCheckpointError(f"checkpoint file {f} does not match its checksum")
    return held


def _target(tree: Any) -> Any:
    """Concrete arrays -> ShapeDtypeStructs with their shardings (numpy stays numpy)."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
        return x

    return jax.tree.map(leaf, tree)


def restore(path: str | os.PathLike, targets: Mapping[str, Any]) -> dict[str, Any]:
    """Restores the named items after verifying their files.

    Args:
      targets: {name: abstract pytree (ShapeDtypeStructs, with shardings to place the arrays;
        or concrete arrays / numpy arrays as examples) or `Json()`}.

    Returns:
      {name: pytree with the target's structure, or the JSON value}.

    Raises:
      CorruptCheckpointError: the files of a requested item do not match the record.
    """
    path = pathlib.Path(path).absolute()
    verify(path, targets)
    args = {k: v if isinstance(v, Json) else _target(v) for k, v in targets.items()}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        out = ckptr.restore(path, args=_args(args, restore=True))
    return {k: out[k] for k in targets}


def is_valid(path: str | os.PathLike, items: Iterable[str] | None = None) -> bool:
    """True when `verify` passes (no warning)."""
    try:
        verify(path, items)
    except CorruptCheckpointError:
        return False
    return True


class Series:
    """Numbered checkpoints `root/step_XXXXXXXX`: save, prune to `keep`, restore newest good.

    Args:
      root: folder of the series.
      keep: how many committed checkpoints to keep (older ones are deleted after a save).
    """

    def __init__(self, root: str | os.PathLike, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.root = pathlib.Path(root)
        self.keep = keep

    def path(self, step: int) -> pathlib.Path:
        return self.root / f"step_{step:08d}"

    def steps(self) -> list[int]:
        """Committed steps, ascending (partial folders are never listed)."""
        if not self.root.is_dir():
            return []
        found = (_STEP.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, step: int, items: Mapping[str, Any]) -> pathlib.Path:
        """Saves checkpoint `step` (replacing an existing one of that step), then prunes."""
        path = self.path(step)
        if path.exists() and _primary():
            shutil.rmtree(path)
        _sync(f"pqm-series-{step}")
        save(path, items)
        if _primary():
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.path(old), ignore_errors=True)
        return path

    def restore_latest(self, targets: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """(step, items) of the newest checkpoint that verifies; damaged ones are skipped with a
        `CheckpointWarning` naming the bad file. None when there is none."""
        for step in reversed(self.steps()):
            try:
                return step, restore(self.path(step), targets)
            except CorruptCheckpointError as e:
                warnings.warn(
                    f"skipping damaged checkpoint {self.path(step)}: {e}",
                    CheckpointWarning,
                    stacklevel=2,
                )
        return None

    def clear(self) -> None:
        """Deletes the whole series (e.g. once a stage's final result is saved)."""
        if _primary() and self.root.exists():
            shutil.rmtree(self.root)
        _sync(f"pqm-series-clear-{self.root.name}")


def numpy_tree(tree: Any) -> Any:
    """Host copy of a pytree (numpy arrays), e.g. to keep a small state on the host."""
    return jax.tree.map(np.asarray, jax.device_get(tree))
