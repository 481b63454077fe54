"""Entries -> model inputs: log-mel windows cached on disk, token ids with their loss weights.

Features of each utterance are computed once per (utterance, audio window, mel bins) and kept
as `.npz` in the run's `features/` folder, so reruns, resumed runs and the later evaluation
read them instead of decoding and transforming audio again. Files are written atomically; an
unreadable cache file is recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Sequence

import numpy as np

import pqm_jax
from pqm_jax.data import corpora, features, issues


class DataWarning(pqm_jax.PQMWarning):
    """An utterance left out of training (e.g. its transcript is longer than max_tokens)."""


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


class FeatureStore:
    """Log-mel windows [n_mels, 100 x window_s] of entries, cached under `folder`.

    Args:
      folder: cache folder (created on demand).
      window_s: audio window; longer utterances are reported and skipped.
      n_mels: mel bins of the model.
      report: where unreadable / too long audio is reported.
      write: keep what it computes in `folder` (off in the other processes of a multi-process
        run: one process writes the cache, the others compute what is not there yet).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        window_s: float,
        n_mels: int,
        report: issues.InputReport | None = None,
        write: bool = True,
    ) -> None:
        self.folder = pathlib.Path(folder)
        self.write = write
        self.window_s = window_s
        self.n_mels = n_mels
        self.report = issues.default(report)
        self._reported: set[pathlib.Path] = set()
        self.options = corpora.ReadOptions(max_seconds=window_s, too_long="skip")
        self.config = features.FeatureConfig(
            n_mels=n_mels, n_samples=round(window_s * features.SAMPLE_RATE)
        )

    def path(self, entry: corpora.Entry) -> pathlib.Path:
        """The cache file of `entry`: keyed on its spans, window, mel bins and each audio file's
        size and modification time, so a file that changes (a damaged one fixed) is read anew."""
        spans = ";".join(f"{s.path}:{s.start_s}:{s.end_s}:{_stamp(s.path)}" for s in entry.segments)
        key = f"{entry.utt_id}|{spans}|{entry.gap_s}|{self.window_s}|{self.n_mels}"
        if entry.augment is not None:
            key += f"|{entry.augment.tag()}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.folder / digest[:2] / f"{digest}.npz"

    def get(self, entry: corpora.Entry) -> np.ndarray | None:
        """Cached or computed log-mel [n_mels, frames]; None if the audio is unusable."""
        path = self.path(entry)
        skip = path.with_suffix(".skip")
        if skip.is_file():
            self._report_cached(skip)
            return None
        if path.is_file():
            try:
                with np.load(path) as f:
                    return f["mel"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # torn cache file: recompute
        before = len(self.report.issues)
        utt = corpora.load_entry(entry, options=self.options, report=self.report)
        if self.write:
            path.parent.mkdir(parents=True, exist_ok=True)
        if utt is None:
            if self.write:
                found = [dataclasses.asdict(i) for i in self.report.issues[before:]]
                skip.write_text(json.dumps(found))
            self._reported.add(skip)
            return None
        mel = features.log_mel(utt.audio, self.config)
        if not self.write:
            return mel
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, mel=mel)
        os.replace(tmp, path)
        return mel

    def _report_cached(self, skip: pathlib.Path) -> None:
        """Reports a cached skip again (once per store): a rerun names the unchanged bad file
        as the first run did."""
        if skip in self._reported:
            return
        self._reported.add(skip)
        try:
            found = json.loads(skip.read_text())
        except (OSError, ValueError):
            found = []
        for item in found:
            kind, action = issues.Kind(item["kind"]), issues.Action(item["action"])
            detail = f"{item['detail']}; " if item.get("detail") else ""
            self.report.issue(kind, action, item["source"], detail + "file unchanged since")

    def loader(self, entries: Sequence[corpora.Entry]) -> Callable[[int], np.ndarray]:
        """`load(i)` -> mel of entries[i] (from the cache; for pools too big for memory)."""

        def load(i: int) -> np.ndarray:
            mel = self.get(entries[i])
            if mel is None:
                raise RuntimeError(f"features of {entries[i].utt_id} vanished from the cache")
            return mel

        return load
