"""Score a PQM run: full precision, NF4, NF4 + speaker-independent LoRA and PQM, per speaker.

    python evaluate.py --workdir /tmp/pqm_demo [--beam_size 3] [--max_repeats 0]
    python evaluate.py --config configs/demo.py --workdir /tmp/pqm_demo   # train first if needed

Writes DIR/report.json, DIR/report.md (the table, also printed), DIR/report.png (per-speaker WER
bars) and DIR/transcripts.jsonl.
"""

from pqm_jax.commands.evaluate import (
    entry,
    main,  # noqa: F401  (tests load this file and call main)
)

if __name__ == "__main__":
    entry()
