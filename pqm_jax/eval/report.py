"""The evaluation report: report.json, a Markdown table and a per-speaker WER plot."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from pqm_jax.eval import wer
from pqm_jax.run import workdir as workdir_lib

SYSTEM_LABELS = {
    "fp32": "full precision",
    "nf4": "NF4",
    "nf4_si": "NF4 + speaker-independent LoRA",
    "pqm": "PQM (NF4 + own speaker LoRA)",
    "fp32_30s": "full precision, 30 s windows",
    "nf4_30s": "NF4, 30 s windows",
}


def build(
    systems: Mapping[str, tuple[wer.WerCounts, Mapping[str, wer.WerCounts]]],
    sizes: Mapping[str, int],
    *,
    base_params: int,
    speaker_params: int,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The report dict.

    Args:
      systems: name -> (overall counts, per-speaker counts); names among fp32/nf4/nf4_si/pqm.
      sizes: name -> bytes of the stored arrays of that system (codes, scales, adapters).
      base_params: logical parameter count of the base model.
      speaker_params: trainable parameters of one speaker's adapters.
    """
    out: dict[str, Any] = {"systems": {}}
    for name, (overall, per) in systems.items():
        out["systems"][name] = {
            "label": SYSTEM_LABELS.get(name, name),
            "wer": overall.wer,
            "counts": overall.as_dict(),
            "per_speaker": wer.summarise(per),
            "per_speaker_counts": {s: c.as_dict() for s, c in per.items()},
            "size_bytes": int(sizes[name]),
        }
    s = out["systems"]
    out["speaker_params"] = int(speaker_params)
    out["base_params"] = int(base_params)
    out["speaker_params_ratio"] = speaker_params / base_params
    if "pqm" in s:
        # None where the baseline made no error (the reduction is undefined)
        out["relative_wer_reduction"] = {
            f"vs_{ref}": (
                wer.relative_reduction(s["pqm"]["wer"], s[ref]["wer"]) if s[ref]["wer"] else None
            )
            for ref in ("fp32", "nf4", "nf4_si", "fp32_30s", "nf4_30s")
            if ref in s
        }
    if "fp32" in s:
        out["compression_vs_fp32"] = {
            n: s["fp32"]["size_bytes"] / v["size_bytes"] for n, v in s.items()
        }
    out.update(extra or {})
    return out


def markdown(report: Mapping[str, Any]) -> str:
    """The paper-style table: WER overall and per speaker, S/D/I, size."""
    systems = report["systems"]
    speakers: Sequence[str] = list(next(iter(systems.values()))["per_speaker"])
    head = ["system", "WER", *speakers, "S/D/I", "size (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in systems.values():
        c = v["counts"]
        row = [
            v["label"],
            f"{100 * v['wer']:.2f}%",
            *(f"{100 * v['per_speaker'][sp]:.1f}" for sp in speakers),
            f"{c['substitutions']}/{c['deletions']}/{c['insertions']}",
            f"{v['size_bytes'] / 1e6:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    partial = report.get("partial")
    if partial:
        missing = partial.get("missing_speakers", [])
        notes.append(
            "PARTIAL REPORT: the run has not finished"
            + (f"; not adapted yet: {', '.join(missing)}" if missing else "")
            + ("; stage 2 unfinished, NF4+SI and PQM left out" if not partial.get("stage2") else "")
            + "."
        )
    rr = report.get("relative_wer_reduction", {})
    if rr:
        notes.append(
            "Relative WER reduction of PQM: "
            + ", ".join(
                f"{100 * v:.1f}% {k.replace('_', ' ')}"
                if v is not None
                else f"undefined {k.replace('_', ' ')} (no baseline error)"
                for k, v in rr.items()
            )
            + "."
        )
    notes.append(
        f"Speaker-specific parameters: {report['speaker_params']:,} "
        f"({100 * report['speaker_params_ratio']:.2f}% of the base)."
    )
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def plot(report: Mapping[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    """Grouped bars: per-speaker WER (%) of every system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = report["systems"]
    speakers = list(next(iter(systems.values()))["per_speaker"])
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(speakers))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(speakers) + 2), 4))
    for i, v in enumerate(systems.values()):
        ys = [100 * v["per_speaker"][s] for s in speakers]
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, ys, width, label=v["label"])
    ax.set_xticks(x, speakers, rotation=30, ha="right")
    ax.set_ylabel("WER (%)")
    ax.set_title("Per-speaker WER")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(report: Mapping[str, Any], workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes report.json, report.md and report.png into `workdir`; returns their paths."""
    d = pathlib.Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {kind: d / name for kind, name in workdir_lib.REPORT.items()}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    paths["md"].write_text(markdown(report))
    plot(report, paths["png"])
    return paths
