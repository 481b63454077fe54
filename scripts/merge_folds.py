"""Merges the evaluation reports of cross-validation folds into one (JSON, Markdown, plot).

    python scripts/merge_folds.py runs/conformer_fsdd_fold1 runs/conformer_fsdd_fold2 \
        --out results/conformer_fsdd.json --command "python train.py ..." ...

Each run folder must hold the report.json that `evaluate.py --workdir RUN` wrote. The output
JSON is `report.json`'s layout (per system: wer, counts with S/D/I, per_speaker, size_bytes)
plus `folds` and the `commands` given; a .md table and a .png plot are written beside it.
"""

import argparse
import json
import pathlib
import sys

from pqm_jax.eval import folds, report
from pqm_jax.run import workdir as workdir_lib


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=pathlib.Path, help="evaluated run folders")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="merged JSON file")
    parser.add_argument(
        "--command", action="append", default=[], help="a command that produced it (repeatable)"
    )
    args = parser.parse_args(argv)
    reports = []
    for run in args.runs:
        path = run / workdir_lib.REPORT["json"]
        if not path.is_file():
            sys.exit(f"{path} not found: run `python evaluate.py --workdir {run}` first")
        reports.append(json.loads(path.read_text()))
    merged = folds.merge(reports, names=[r.name for r in args.runs])
    merged["commands"] = args.command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    table = report.markdown(merged)
    if {"nf4_si", "pqm"} <= set(merged["systems"]):
        table += "\nThe speaker-specific step, per speaker:\n\n" + folds.step_table(merged)
    args.out.with_suffix(".md").write_text(table)
    report.plot(merged, args.out.with_suffix(".png"))
    print(table)
    print(f"wrote {args.out} (+ .md, .png)")


if __name__ == "__main__":
    main()
