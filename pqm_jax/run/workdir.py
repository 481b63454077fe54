"""The layout of a run folder: every path train.py and evaluate.py read or write, in one place.

config.json            the run's configuration (a resumed run must match it)
metrics.jsonl, tb/     metrics (JSON lines; TensorBoard scalars); metrics.png at the end
features/              cached log-mel windows (reused by resumed runs and the evaluation);
                       features_<W>s/ for another window (the 30 s baselines)
data/                  corpora a source makes (rendered synthetic speakers)
pretrain/              a model trained from scratch by this run (`Family.save`)
ckpt/base              the quantised base, saved once
ckpt/pretrain, stage2, stage3    rolling checkpoints of the running stage (adapters,
                       optimiser state, data position); deleted when its result is saved
stage2/final           the selected speaker-independent adapters (+ info)
stage3/bank/chunk_NNNN adapters.npy (the chunk's speakers stacked, one row each) and
                       chunk.json (speakers, results, layout, checksum); see `run.bank`
stage3/manifest.jsonl  appended: a header, one line per finished chunk (speakers -> results,
                       chunk, row), then "complete"
report.json/.md/.png, transcripts.jsonl    the evaluation
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time
from collections.abc import Iterator

from pqm_jax import errors, jsonio

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
METRICS_PLOT = "metrics.png"
REPORT = {"json": "report.json", "md": "report.md", "png": "report.png"}
TRANSCRIPTS = "transcripts.jsonl"
LOCK = ".lock"
CHUNK_ARRAYS = "adapters.npy"
CHUNK_RECORD = "chunk.json"


class WorkdirLocked(RuntimeError):
    """Another process is running on this work folder."""


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths of the run folder `root` (nothing is created until a caller writes there)."""

    root: pathlib.Path

    @classmethod
    def of(cls, root: str | os.PathLike | Workdir) -> Workdir:
        return root if isinstance(root, Workdir) else cls(pathlib.Path(root))

    @property
    def config(self) -> pathlib.Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> pathlib.Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> pathlib.Path:
        return self.root / TENSORBOARD

    @property
    def metrics_plot(self) -> pathlib.Path:
        return self.root / METRICS_PLOT

    def features(self, window_s: float | None = None) -> pathlib.Path:
        """The feature cache of the run's window, or `features_<W>s` for another window."""
        return self.root / ("features" if window_s is None else f"features_{window_s:g}s")

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    @property
    def pretrain(self) -> pathlib.Path:
        return self.root / "pretrain"

    def ckpt(self, name: str) -> pathlib.Path:
        """`ckpt/<name>`: "base", or a stage's rolling checkpoints."""
        return self.root / "ckpt" / name

    @property
    def stage2_final(self) -> pathlib.Path:
        return self.root / "stage2" / "final"

    @property
    def bank(self) -> pathlib.Path:
        return self.root / "stage3" / "bank"

    def chunk(self, index: int) -> pathlib.Path:
        return self.bank / chunk_name(index)

    @property
    def manifest(self) -> pathlib.Path:
        return self.root / "stage3" / "manifest.jsonl"

    def report(self, kind: str) -> pathlib.Path:
        """The evaluation's report file of `kind` ("json", "md", "png")."""
        return self.root / REPORT[kind]

    @property
    def transcripts(self) -> pathlib.Path:
        return self.root / TRANSCRIPTS

    @property
    def lock_file(self) -> pathlib.Path:
        return self.root / LOCK

    def started(self) -> bool:
        """True once training has written anything (a checkpoint or a result): from then on
        the folder belongs to its configuration. The quantised base alone (`ckpt/base`) is a
        cache of the model, not training."""
        trained = [self.ckpt(n) for n in ("pretrain", "stage2", "stage3")]
        trained += [self.pretrain, self.stage2_final.parent, self.bank.parent]
        return any(p.exists() for p in trained)


@contextlib.contextmanager
def lock(workdir: Workdir) -> Iterator[None]:
    """Holds the work folder for this process while the block runs (an exclusive `flock` on
    `<root>/.lock`, released when the process ends, even by kill -9).

    Raises:
      WorkdirLocked: another process holds it; the message says which (pid, host, command).
    """
    workdir.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirLocked(
                f"{workdir.root} is in use by {_holder(workdir)}; wait for it to finish, or "
                "use another --workdir"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(os.path.basename(a) for a in sys.argv[:1]) or "python",
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(workdir: Workdir) -> str:
    try:
        h = json.loads(workdir.lock_file.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not h:
        return "another process"
    return f"pid {h.get('pid')} on {h.get('host')} ({h.get('command')}, since {h.get('since')})"


def read_config(workdir: Workdir) -> dict:
    """The run's `config.json` as a dict.

    Raises:
      FileNotFoundError: the folder holds no run.
      ConfigError: the file is damaged (names it, the position and the fix).
    """
    path = workdir.config
    if not path.is_file():
        raise FileNotFoundError(f"{workdir.root} holds no run (no {CONFIG})")
    try:
        return jsonio.read_object(path, what="the run's configuration")
    except jsonio.DamagedFile as e:
        raise errors.ConfigError(f"{e}, or start again in a new --workdir") from None


def chunk_name(index: int) -> str:
    return f"chunk_{index:04d}"
