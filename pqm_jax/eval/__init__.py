"""Scoring a run: `run.evaluate` (four systems on the same test utterances), `wer` (jiwer-backed
WER with S/D/I per speaker), `report` (report.json, the Markdown table, the per-speaker plot)."""
