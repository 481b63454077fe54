"""Stage 3 at 1,000 and 10,000 speakers: peak memory, time per speaker, and the share of time
spent writing, each speaker count in its own process (peak RSS is per process).

Setting: the `configs/tiny_test.py` model (random 1-layer Whisper, d_model 64, 80 mel bins,
LoRA r 2, NF4 base) cut to a `--window` s audio window (0.5 s) and 6 decoder tokens, on one
device, through the real stage-3 driver
(`run.stages.adapt_speakers`: chunking by `stage3.memory_budget_mb`, per-chunk feature loading,
bank chunk files, the appended manifest, rolling checkpoints every `--ckpt_every` steps).
Each speaker has 1 adaptation and 1 dev utterance (batch 1, 2 epochs: 2 updates and 3 dev
evaluations a speaker) whose log-mel are produced when a chunk loads them (standing in for the feature cache on disk: nothing is resident before its chunk).

Written per speaker count (`--json FILE`): `peak_rss_bytes` (getrusage), `seconds_per_speaker`
(stage-3 wall time / speakers), `write_fraction` (time inside bank chunk writes, manifest
appends and rolling checkpoints / stage-3 time), `metrics_fraction` (writing metrics.jsonl
and TensorBoard scalars, per speaker at each evaluation), and the chunk plan. The printed table gives
RSS and seconds per speaker against the smallest count, measured in the same run.

Run: python bench/bench_bank_scale.py [--speakers 1000,10000] [--budget_mb 64]
       [--window 0.5] [--ckpt_every 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _one(n: int, budget_mb: float, ckpt_every: int, window: float, workdir: str) -> dict:
    """Runs stage 3 for `n` speakers in this process; the row for the table."""
    import jax
    import numpy as np

    from pqm_jax import checkpoint
    from pqm_jax.run import bank, metrics, pipeline, stages
    from pqm_jax.run import config as config_lib
    from pqm_jax.train import adapt
    from pqm_jax.train import examples as ex

    c = config_lib.load_file(ROOT / "configs" / "tiny_test.py")
    c.mesh.data = 1
    c.stage3.chunk_speakers = 0  # sized by the memory budget
    c.stage3.memory_budget_mb = budget_mb
    c.stage3.ckpt_every = ckpt_every
    c.lora.dropout = 0.0
    c.model.audio_window_s = window
    c.model.max_tokens = 6
    c.stage3.batch_size = 1
    c.stage3.eval_batch_size = 1
    config = config_lib.from_dict(c)
    run = pipeline.setup(config, workdir, progress=False)
    init = pipeline.initial_adapters(run)
    frames = round(config.model.audio_window_s * 100)
    n_mels = run.store.n_mels
    tokens = config.model.max_tokens

    def examples(seed: int, count: int) -> ex.Examples:
        rng = np.random.default_rng(seed)
        seq = rng.integers(10, 1000, (count, tokens + 1)).astype(np.int32)
        weights = np.zeros((count, tokens), np.float32)
        weights[:, 1:4] = 1.0

        def load(i: int, seed=seed) -> np.ndarray:
            r = np.random.default_rng([seed, i])
            return r.normal(size=(n_mels, frames)).astype(np.float32)

        ids = tuple(f"u{seed}_{i}" for i in range(count))
        return ex.Examples(ids, seq[:, :-1], seq[:, 1:], weights, load_mel=load)

    data = {
        f"spk{i:05d}": adapt.SpeakerData(train=examples(2 * i, 1), dev=examples(2 * i + 1, 1))
        for i in range(n)
    }
    spent = {"write": 0.0, "metrics": 0.0}

    def timed(fn, what="write"):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[what] += time.perf_counter() - t

        return wrapper

    bank.write_chunk = timed(bank.write_chunk)
    bank.append_line = timed(bank.append_line)
    checkpoint.Series.save = timed(checkpoint.Series.save)
    metrics.MetricsWriter.write = timed(metrics.MetricsWriter.write, "metrics")
    t0 = time.perf_counter()
    manifest = stages.adapt_speakers(run, data, init)
    seconds = time.perf_counter() - t0
    jax.effects_barrier()
    files = sum(1 for p in run.workdir.bank.rglob("*") if p.is_file())
    return {
        "speakers": n,
        "adapted": len(manifest["speakers"]),
        "slots": manifest["slots"],
        "chunks": len(manifest["chunks"]),
        "bank_files": files,
        "manifest_lines": len(run.workdir.manifest.read_text().splitlines()),
        "stage3_seconds": seconds,
        "seconds_per_speaker": seconds / n,
        "write_seconds": spent["write"],
        "write_fraction": spent["write"] / seconds,
        "metrics_fraction": spent["metrics"] / seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "budget_mb": budget_mb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speakers", default="1000,10000")
    p.add_argument("--budget_mb", type=float, default=64.0)
    p.add_argument("--ckpt_every", type=int, default=0)
    p.add_argument("--window", type=float, default=0.5, help="audio window, s")
    p.add_argument("--json", default="")
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="pqm_bank_scale_") as wd:
            row = _one(args.one, args.budget_mb, args.ckpt_every, args.window, wd)
        pathlib.Path(args.out).write_text(json.dumps(row))
        return
    rows = []
    for n in [int(x) for x in args.speakers.split(",")]:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--one", str(n), "--out", out.name]
            cmd += ["--budget_mb", str(args.budget_mb), "--ckpt_every", str(args.ckpt_every)]
            cmd += ["--window", str(args.window)]
            subprocess.run(cmd, check=True, env=_env())
            rows.append(json.loads(pathlib.Path(out.name).read_text()))
        print(f"done: {n} speakers", file=sys.stderr)
    first = rows[0]
    print(
        "| speakers | chunks x slots | bank files | peak RSS MB | RSS vs first | s/speaker "
        "| vs first | writing |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['speakers']} | {r['chunks']} x {r['slots']} | {r['bank_files']} "
            f"| {r['peak_rss_bytes'] / 2**20:.0f} | {r['peak_rss_bytes'] / first['peak_rss_bytes']:.2f}x "
            f"| {r['seconds_per_speaker'] * 1e3:.1f} ms "
            f"| {r['seconds_per_speaker'] / first['seconds_per_speaker']:.2f}x "
            f"| {100 * r['write_fraction']:.1f}% |"
        )
    if args.json:
        write_json(args.json, rows, " ".join(sys.argv[1:]))


def report_rows(counts: list[dict]) -> list:
    """bench/report.py rows: each count against the smallest, writing against the 10% goal."""
    import report

    first, out = counts[0], []
    for r in counts[1:]:
        n, m = r["speakers"], first["speakers"]
        out.append(
            report.row(
                f"peak RSS of stage 3, {n} speakers ({r['chunks']} x {r['slots']} slots)",
                [r["peak_rss_bytes"]],
                [first["peak_rss_bytes"]],
                peer_name=f"{m} speakers, {first['chunks']} x {first['slots']} slots",
                unit="bytes",
                better="lower",
            )
        )
        out.append(
            report.row(
                f"stage-3 time per speaker, {n} speakers",
                [r["seconds_per_speaker"]],
                [first["seconds_per_speaker"]],
                peer_name=f"{m} speakers",
                unit="s",
                better="lower",
            )
        )
    for r in counts:
        out.append(
            report.row(
                f"share of stage-3 time spent writing (bank chunks, manifest), "
                f"{r['speakers']} speakers; {r['bank_files']} bank files, "
                f"{r['manifest_lines']} manifest lines",
                [r["write_fraction"]],
                [0.10],
                peer_name="the 10% goal",
                unit="fraction",
                better="lower",
            )
        )
    return out


def write_json(path: str, counts: list[dict], args: str) -> None:
    """The per-count rows (the issue's fields) and bench/report.py's rows, in one file."""
    import report

    setting = [
        "random 1-layer Whisper (d_model 64, 80 mel bins, vocabulary 51,864), NF4 base, "
        "LoRA r 2; 0.5 s window, 6 tokens; 1 adaptation + 1 dev utterance a speaker, batch 1, "
        "2 epochs; one CPU device; each count in its own process",
        f"chunks sized by stage3.memory_budget_mb ({counts[0]['budget_mb']:g} MB) counting "
        "XLA's working memory of the update",
    ]
    rows = report_rows(counts)
    data = {"rows": [report.dataclasses.asdict(r) for r in rows], "setting": setting}
    data["counts"] = counts
    data["args"] = args
    pathlib.Path(path).write_text(json.dumps(data, indent=1))


def _env() -> dict:
    import os

    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


if __name__ == "__main__":
    main()
