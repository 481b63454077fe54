"""Cross-validation folds: the reports of runs over disjoint target speakers, as one report.

    merged = folds.merge([json.load(open(p)) for p in paths], names=["fold1", "fold2"])

Counts are summed, so the merged WER weighs each test word once (not each fold's WER); every
fold must have adapted different speakers with the same architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pqm_jax.eval import report as report_lib
from pqm_jax.eval import wer

_COUNT_FIELDS = ("substitutions", "deletions", "insertions", "ref_words", "utterances")


def _counts(d: Mapping[str, Any]) -> wer.WerCounts:
    return wer.WerCounts(*(int(d[k]) for k in _COUNT_FIELDS))


def merge(reports: Sequence[Mapping[str, Any]], *, names: Sequence[str]) -> dict[str, Any]:
    """One report (`report.build`'s layout) from the folds' `report.json` dicts.

    Systems are those every fold evaluated; sizes are the largest fold's (the folds share an
    architecture, so they agree up to the stored adapters). `folds` lists each fold's speakers,
    WER per system and name.

    Raises:
      ValueError: no reports, a speaker in two folds, or folds of different base sizes.
    """
    if not reports:
        raise ValueError("no fold reports to merge")
    seen: dict[str, str] = {}
    for name, rep in zip(names, reports, strict=True):
        first = next(iter(rep["systems"].values()))
        for speaker in first["per_speaker"]:
            if speaker in seen:
                raise ValueError(
                    f"speaker {speaker} is a target of both {seen[speaker]} and {name}"
                )
            seen[speaker] = name
    params = {(r["base_params"], r["speaker_params"]) for r in reports}
    if len(params) != 1:
        raise ValueError(f"folds of different models (base, speaker params): {sorted(params)}")
    base_params, speaker_params = params.pop()
    systems = [s for s in reports[0]["systems"] if all(s in r["systems"] for r in reports)]
    merged, sizes = {}, {}
    for system in systems:
        per: dict[str, wer.WerCounts] = {}
        for rep in reports:
            for speaker, c in rep["systems"][system]["per_speaker_counts"].items():
                per[speaker] = _counts(c)
        per = dict(sorted(per.items()))
        merged[system] = (sum(per.values(), wer.WerCounts()), per)
        sizes[system] = max(r["systems"][system]["size_bytes"] for r in reports)
    folds = [
        {
            "name": name,
            "speakers": list(next(iter(rep["systems"].values()))["per_speaker"]),
            "wer": {s: rep["systems"][s]["wer"] for s in systems},
        }
        for name, rep in zip(names, reports, strict=True)
    ]
    return report_lib.build(
        merged,
        sizes,
        base_params=base_params,
        speaker_params=speaker_params,
        extra={"folds": folds},
    )


def step_table(report: Mapping[str, Any], *, before: str = "nf4_si", after: str = "pqm") -> str:
    """Markdown: per speaker, WER and S/D/I of `before` and `after` and the relative change
    (the speaker-specific step of PQM: NF4 + speaker-independent LoRA -> own LoRA)."""
    systems = report["systems"]
    if before not in systems or after not in systems:
        raise KeyError(f"the report lacks {before!r} or {after!r}: it has {sorted(systems)}")
    a, b = systems[before]["per_speaker_counts"], systems[after]["per_speaker_counts"]
    head = f"| speaker | {before} WER | S/D/I | {after} WER | S/D/I | relative change |"
    lines = [head, "|---|---|---|---|---|---|"]
    for speaker in sorted(a):
        ca, cb = _counts(a[speaker]), _counts(b[speaker])
        change = wer.relative_reduction(cb.wer, ca.wer) if ca.wer else float("nan")
        lines.append(
            f"| {speaker} | {100 * ca.wer:.1f}% | {ca.substitutions}/{ca.deletions}/"
            f"{ca.insertions} | {100 * cb.wer:.1f}% | {cb.substitutions}/{cb.deletions}/"
            f"{cb.insertions} | {100 * change:.1f}% fewer errors |"
        )
    return "\n".join(lines) + "\n"
