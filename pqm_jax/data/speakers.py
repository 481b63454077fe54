"""Speaker splits: per speaker ~40% adaptation / 20% dev / 40% test, and speaker-disjoint sets.

Everything here works on any items with `.speaker` and `.utt_id` (corpus `Entry`s before audio
is read, or `Utterance`s), so splits are decided from transcripts alone.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from pqm_jax.data import corpora, issues

PARTS = ("adapt", "dev", "test")
# Split names accepted from a manifest's "split" field.
_ALIASES = {"adapt": "adapt", "train": "adapt", "dev": "dev", "valid": "dev", "test": "test"}


class SpeakerLeakError(ValueError):
    """A speaker held out for testing appears in a training set."""


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How each speaker's utterances are split.

    Attributes:
      adapt, dev, test: fractions (normalised to sum 1).
      order: "contiguous" (sorted by utterance id, then cut) or "shuffle" (seeded per speaker).
      seed: for "shuffle".
      min_utterances: speakers with fewer are reported and left out (at least 3).
    """

    adapt: float = 0.4
    dev: float = 0.2
    test: float = 0.4
    order: str = "contiguous"
    seed: int = 0
    min_utterances: int = 5


@dataclasses.dataclass(frozen=True)
class Split:
    """One speaker's items, each part sorted by utterance id."""

    adapt: tuple = ()
    dev: tuple = ()
    test: tuple = ()

    def part(self, name: str) -> tuple:
        if name not in PARTS:
            raise KeyError(f"unknown split part {name!r}; expected one of {PARTS}")
        return getattr(self, name)


def split_counts(n: int, config: SplitConfig = SplitConfig()) -> tuple[int, int, int]:
    """(adapt, dev, test) sizes for `n` items; each part gets at least one item when n >= 3."""
    total = config.adapt + config.dev + config.test
    if total <= 0:
        raise ValueError("split fractions must sum to a positive number")
    n_adapt = math.floor(n * config.adapt / total + 0.5)
    n_dev = math.floor(n * config.dev / total + 0.5)
    if n >= 3:
        n_adapt = min(max(n_adapt, 1 if config.adapt else 0), n - 2)
        n_dev = min(max(n_dev, 1 if config.dev else 0), n - n_adapt - (1 if config.test else 0))
    n_dev = max(0, min(n_dev, n - n_adapt))
    return n_adapt, n_dev, n - n_adapt - n_dev


def split_speaker(items: Sequence, config: SplitConfig = SplitConfig()) -> Split:
    """Splits one speaker's `items` into adapt/dev/test; deterministic for `config`."""
    ordered = sorted(items, key=lambda x: x.utt_id)
    if config.order == "shuffle":
        speaker = ordered[0].speaker if ordered else ""
        rng = np.random.default_rng([config.seed, zlib.crc32(speaker.encode())])
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
    elif config.order != "contiguous":
        raise ValueError(f"unknown split order {config.order!r}; use 'contiguous' or 'shuffle'")
    n_adapt, n_dev, _ = split_counts(len(ordered), config)
    cut = (ordered[:n_adapt], ordered[n_adapt : n_adapt + n_dev], ordered[n_adapt + n_dev :])
    adapt, dev, test = (tuple(sorted(p, key=lambda x: x.utt_id)) for p in cut)
    return Split(adapt=adapt, dev=dev, test=test)


def split_by_speaker(
    items: Iterable,
    config: SplitConfig = SplitConfig(),
    *,
    report: issues.InputReport | None = None,
) -> dict[str, Split]:
    """Splits every speaker's items; speakers with < `config.min_utterances` are reported and
    left out. Returns {speaker: Split} with speakers sorted."""
    report = issues.default(report)
    minimum = max(3, config.min_utterances)
    out = {}
    for speaker, own in corpora.by_speaker(items).items():
        if len(own) < minimum:
            report.issue(
                issues.Kind.FEW_UTTERANCES,
                issues.Action.SKIPPED,
                f"speaker {speaker}",
                f"{len(own)} utterances, need {minimum}",
            )
            continue
        out[speaker] = split_speaker(own, config)
    return out


def split_from_field(items: Iterable, *, report: issues.InputReport | None = None) -> dict:
    """{speaker: Split} from each item's own `.split` ("adapt"/"train", "dev"/"valid", "test");
    items with no or an unknown split name are reported and skipped."""
    report = issues.default(report)
    parts: dict[str, dict[str, list]] = {}
    for item in items:
        name = _ALIASES.get((item.split or "").lower())
        if name is None:
            report.issue(
                issues.Kind.BAD_RECORD,
                issues.Action.SKIPPED,
                f"{item.path} [{item.utt_id}]",
                f"split {item.split!r}",
            )
            continue
        parts.setdefault(item.speaker, {p: [] for p in PARTS})[name].append(item)
    return {
        s: Split(**{p: tuple(sorted(v, key=lambda x: x.utt_id)) for p, v in parts[s].items()})
        for s in sorted(parts)
    }


def choose_speakers(
    speakers: Iterable[str], *, n_held_out: int, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Splits speaker ids into (speaker-independent pool, held-out test speakers), disjoint,
    deterministic for `seed`; both lists sorted."""
    pool = sorted(set(speakers))
    if not 0 <= n_held_out <= len(pool):
        raise ValueError(f"cannot hold out {n_held_out} of {len(pool)} speakers")
    held = set(np.asarray(pool)[np.random.default_rng(seed).permutation(len(pool))[:n_held_out]])
    return [s for s in pool if s not in held], sorted(held)


def speaker_independent(items: Iterable, held_out: Iterable[str]) -> list:
    """Items of every speaker not in `held_out` (for the speaker-independent stage)."""
    held = set(held_out)
    out = [item for item in items if item.speaker not in held]
    check_disjoint(out, held)
    return out


def pool_parts(splits: dict[str, Split], part: str, *, exclude: Iterable[str] = ()) -> list:
    """One part (e.g. "adapt") of every speaker's split, except the `exclude` speakers, e.g.
    FSDD's speaker-independent control: the other speakers' adaptation data."""
    skip = set(exclude)
    return [item for s, split in splits.items() if s not in skip for item in split.part(part)]


def check_disjoint(train: Iterable, held_out: Iterable) -> None:
    """Raises `SpeakerLeakError` if any held-out speaker appears in `train`.

    Both arguments may be items (with `.speaker`) or speaker ids.
    """
    train_speakers = {_speaker(x) for x in train}
    leaked = train_speakers & {_speaker(x) for x in held_out}
    if leaked:
        raise SpeakerLeakError(f"held-out speakers in training data: {sorted(leaked)[:10]}")


def _speaker(x) -> str:
    return x if isinstance(x, str) else x.speaker
