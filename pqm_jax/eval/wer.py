"""Word error rate with substitution/deletion/insertion counts, overall and per speaker."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jiwer


@dataclasses.dataclass(frozen=True)
class WerCounts:
    """Error counts of a set of utterances; WER = (S + D + I) / reference words."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0
    utterances: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float("nan")

    def __add__(self, other: WerCounts) -> WerCounts:
        return WerCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "wer": self.wer}


def count(ref: str, hyp: str, normalize: Callable[[str], str] = str) -> WerCounts:
    """Counts of one utterance after `normalize`; an empty reference makes every word an insertion."""
    r = normalize(ref).split()
    h = normalize(hyp).split()
    if not r:
        return WerCounts(insertions=len(h), utterances=1)
    if not h:
        return WerCounts(deletions=len(r), ref_words=len(r), utterances=1)
    out = jiwer.process_words(" ".join(r), " ".join(h))
    return WerCounts(out.substitutions, out.deletions, out.insertions, len(r), 1)


def score(
    refs: Sequence[str], hyps: Sequence[str], normalize: Callable[[str], str] = str
) -> WerCounts:
    """Summed counts over utterances (corpus-level WER, not a mean of utterance WERs)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = WerCounts()
    for r, h in zip(refs, hyps):
        total = total + count(r, h, normalize)
    return total


def score_by_speaker(
    refs: Sequence[str],
    hyps: Sequence[str],
    speakers: Sequence[str],
    normalize: Callable[[str], str] = str,
) -> tuple[WerCounts, dict[str, WerCounts]]:
    """(overall counts, counts per speaker in first-seen order)."""
    if not len(refs) == len(hyps) == len(speakers):
        raise ValueError("refs, hyps and speakers must have the same length")
    per: dict[str, WerCounts] = {}
    for r, h, s in zip(refs, hyps, speakers):
        per[s] = per.get(s, WerCounts()) + count(r, h, normalize)
    overall = sum(per.values(), WerCounts())
    return overall, per


def relative_reduction(new: float, old: float) -> float:
    """(old - new) / old: 0.151 means 15.1% fewer errors than `old`."""
    return (old - new) / old if old else float("nan")


def summarise(per_speaker: Mapping[str, WerCounts]) -> dict[str, float]:
    """Speaker -> WER, for tables and plots."""
    return {s: c.wer for s, c in per_speaker.items()}
