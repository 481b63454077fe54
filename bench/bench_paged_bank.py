"""Decoding mixed-speaker batches from a bank of 10,000 adapted speakers: the paged bank (rows
read from the memory-mapped chunk files, a bounded cache) against the whole bank in memory.

Setting: a random 1-layer Whisper (`testing.toy.tiny_config`, d_model 64, NF4 base) with LoRA
r `--rank` on every attention projection; `--speakers` speakers' adapters written as bank chunks
of `--chunk` speakers (the format stage 3 writes). Each mode runs in its own process (peak RSS is
per process) and decodes the same `--batches` batches of `--batch` utterances, each utterance of
a random speaker, greedily for 6 tokens: "memory" stacks every speaker's adapters first
(`Results.bank()`), "paged" gathers each batch's rows (`PagedBank`, cache `--cache` speakers).
Printed: peak RSS and median batch latency (gather + decode, after one warm-up batch) of each,
and paged against memory, measured in the same run.

Run: python bench/bench_paged_bank.py [--speakers 10000] [--rank 32] [--batch 8]
       [--batches 20] [--cache 64] [--json FILE]
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


def _template(rank: int):
    import jax

    from pqm_jax import lora as lora_lib
    from pqm_jax.testing import toy

    cfg = toy.tiny_config(n_mels=8, d_model=64)
    base = toy.quantized_model(cfg, key=jax.random.key(0))
    lc = lora_lib.LoraConfig(rank=rank, alpha=rank, targets=toy.whisper_family.LORA_TARGETS)
    template = jax.eval_shape(lambda: lora_lib.init(base, lc, key=jax.random.key(1)))
    return cfg, base, template


def _write(folder: str, speakers: int, rank: int, chunk: int) -> None:
    import numpy as np

    from pqm_jax.run import bank
    from pqm_jax.run import workdir as workdir_lib

    _, _, template = _template(rank)
    paths = workdir_lib.Workdir(pathlib.Path(folder))
    width = sum(int(np.prod(leaf["shape"])) for leaf in bank.layout(template))
    bank.write_lines(paths, [{"header": True, "format": bank.FORMAT, "slots": chunk}])
    rng = np.random.default_rng(0)
    for c, start in enumerate(range(0, speakers, chunk)):
        names = [f"spk{i:05d}" for i in range(start, min(start + chunk, speakers))]
        rows = rng.normal(0.0, 0.05, (len(names), width)).astype(np.float32)
        results = [{"speaker": s} for s in names]
        bank.write_chunk(paths, c, rows, names, results, template)
        bank.append_line(paths, {"chunk": c, "speakers": results})
    bank.append_line(paths, {"complete": True})


def _decode(folder: str, mode: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pqm_jax.models.whisper import decoding
    from pqm_jax.run import bank
    from pqm_jax.run import workdir as workdir_lib
    from pqm_jax.testing import toy

    cfg, base, template = _template(args.rank)
    paths = workdir_lib.Workdir(pathlib.Path(folder))
    paged = bank.PagedBank(paths, template, cache_speakers=args.cache)
    names = paged.speakers
    source = paged
    if mode == "memory":
        source = bank.StackedBank(paged.gather(names), names)  # every speaker, in memory
    opts = decoding.DecodeOptions(prompt=(1, 2), eot=3, max_new_tokens=6)
    rng = np.random.default_rng(1)
    times, tokens = [], []
    for b in range(args.batches + 1):
        mel = toy.random_batch(cfg, (args.batch,), seed=b)["mel"]
        who = [names[i] for i in rng.integers(0, len(names), args.batch)]
        t = time.perf_counter()
        lora = jax.tree.map(jnp.asarray, source.gather(who))
        res = decoding.generate(base, mel, config=cfg, options=opts, lora=lora)
        out = np.asarray(res.tokens)
        if b:  # the first batch compiles
            times.append(time.perf_counter() - t)
        tokens.append(out.tolist())
    return {
        "mode": mode,
        "speakers": len(names),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "batch_seconds_median": float(np.median(times)),
        "tokens": tokens,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speakers", type=int, default=10_000)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--cache", type=int, default=64)
    p.add_argument("--json", default="")
    p.add_argument("--mode", default="", help=argparse.SUPPRESS)
    p.add_argument("--bank", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        pathlib.Path(args.out).write_text(json.dumps(_decode(args.bank, args.mode, args)))
        return
    with tempfile.TemporaryDirectory(prefix="pqm_paged_bank_") as folder:
        _write(folder, args.speakers, args.rank, args.chunk)
        size = sum(f.stat().st_size for f in pathlib.Path(folder).rglob("*.npy"))
        rows = {}
        for mode in ("memory", "paged"):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, __file__, "--mode", mode, "--bank", folder]
                cmd += ["--out", out.name, "--rank", str(args.rank), "--batch", str(args.batch)]
                cmd += ["--batches", str(args.batches), "--cache", str(args.cache)]
                subprocess.run(cmd, check=True)
                rows[mode] = json.loads(pathlib.Path(out.name).read_text())
    same = rows["memory"].pop("tokens") == rows["paged"].pop("tokens")
    mem, pag = rows["memory"], rows["paged"]
    print(f"bank on disk: {args.speakers} speakers, {size / 2**20:.0f} MiB; same tokens: {same}")
    print("| bank | peak RSS MiB | batch latency ms (median) |")
    print("|---|---|---|")
    for r in (mem, pag):
        print(
            f"| {r['mode']} | {r['peak_rss_bytes'] / 2**20:.0f} "
            f"| {r['batch_seconds_median'] * 1e3:.2f} |"
        )
    print(
        f"| paged / memory | {pag['peak_rss_bytes'] / mem['peak_rss_bytes']:.2f}x "
        f"| {pag['batch_seconds_median'] / mem['batch_seconds_median']:.2f}x |"
    )
    if args.json:
        import report

        note = f"bank of {args.speakers} speakers, {size / 2**20:.0f} MiB on disk"
        rows = [
            report.row(
                f"peak RSS decoding mixed batches of {args.batch}",
                [pag["peak_rss_bytes"]],
                [mem["peak_rss_bytes"]],
                peer_name="whole bank in memory",
                unit="bytes",
                better="lower",
                note=note,
            ),
            report.row(
                f"batch latency (gather + greedy 6 tokens), batch {args.batch}",
                [pag["batch_seconds_median"]],
                [mem["batch_seconds_median"]],
                peer_name="whole bank in memory",
                unit="s",
                better="lower",
                note=f"median of {args.batches} batches; same tokens: {same}",
            ),
        ]
        setting = [
            f"random 1-layer Whisper (d_model 64), NF4 base, LoRA r {args.rank} on every "
            f"attention projection; paged cache {args.cache} speakers; each mode in its own "
            "process"
        ]
        data = {"rows": [report.dataclasses.asdict(r) for r in rows], "setting": setting}
        data |= {"bank_bytes": size, "same_tokens": same, "modes": [mem, pag]}
        pathlib.Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
