"""How the vmapped bank scales with the number of speakers: time per step per speaker and
memory, each against the one-speaker bank measured in the same run.

Setting (reduced so 512 speakers fit a CPU run): NF4 Whisper tiny.en cut to a `--window` s audio
window, `--tokens` decoder tokens, batch `--batch` per speaker, LoRA r 8 on q/k/v/out, AdamW.
S speakers run as ceil(S / slots) chunks of one compiled program of `slots = min(S, --chunk)`
bank slots (as `train.adapt` does beyond `chunk_speakers`); a "step" updates every speaker once.
Timed: `--repeats` steps after a warm-up step (compilation excluded, reported). Memory: the
adapters + AdamW state (mu, nu) of all S speakers, and the compiled program's temporaries
(`compiled.memory_analysis().temp_size_in_bytes`, where the backend reports it).

Run: python bench/bench_scaling.py [--speakers 1,8,64,512] [--chunk 64] [--window 1]
       [--tokens 8] [--batch 1] [--repeats 2] [--json rows.json]
"""

from __future__ import annotations

import argparse
import time

import bench_peft_peer
import jax
import jax.numpy as jnp
import limits
import numpy as np
import report

from pqm_jax import lora as lora_lib
from pqm_jax import sharding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.quant import tree as qtree
from pqm_jax.run import backbone
from pqm_jax.run import config as config_lib
from pqm_jax.train import adapt, optim, steps


def _program(lora, cfg, opt_cfg, mesh, base, base_s, slots: int, data: dict):
    """(compiled step for `slots` speakers, compile seconds, temp bytes or None)."""
    programs = adapt.compile_programs(
        lora=lora,
        config=steps.StepConfig(model=cfg),
        optimizer=opt_cfg,
        mesh=mesh,
        base_shardings=base_s,
        slots=slots,
    )
    bank = _bank(lora, slots)
    opt = programs.init_opt(bank)
    t = time.perf_counter()
    compiled = programs.step.lower(bank, opt, base, data, *_vec(slots), jax.random.key(0)).compile()
    seconds = time.perf_counter() - t
    try:
        temp = compiled.memory_analysis().temp_size_in_bytes
    except Exception:  # not every backend reports it
        temp = None
    return compiled, programs, seconds, temp


def _bank(lora, slots: int):
    """`slots` copies of the adapters along a leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (slots, *x.shape)), lora)


def _vec(slots: int) -> list[np.ndarray]:
    total = np.full(slots, 100, np.int32)
    return [np.zeros(slots, np.int32), total, total, np.ones(slots, bool), np.arange(slots)]


def measure(args) -> tuple[list[report.Row], list[str]]:
    spec = config_lib.ModelSpec(name="tiny.en", audio_window_s=args.window)
    full, cfg_full, _ = spec.family.load(spec, seed=0, folder=None)
    base, cfg = spec.family.window(backbone.quantize(full, spec), cfg_full, args.window)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    base_s = sharding.base_shardings(base, mesh)
    base = sharding.put(base, base_s)
    lora = lora_lib.init(
        base,
        lora_lib.LoraConfig(rank=8, alpha=16.0, targets=whisper_family.LORA_TARGETS),
        key=jax.random.key(1),
    )
    opt_cfg = optim.OptimConfig(name="adamw", learning_rate=1e-3, weight_decay=0.01)
    per_speaker_state = 3 * qtree.tree_nbytes(lora)  # adapters, Adam mu and nu
    key = jax.random.key(0)
    found: dict[int, dict] = {}
    compiled_at: dict[int, tuple] = {}
    for s in args.speakers:
        slots = min(s, args.chunk)
        chunks = -(-s // slots)
        data = [  # [slots, A=1, B, ...] per chunk
            bench_peft_peer.batches(cfg, slots, 1, args.batch, args.tokens, seed=c)
            for c in range(chunks)
        ]
        if slots not in compiled_at:
            compiled_at[slots] = _program(lora, cfg, opt_cfg, mesh, base, base_s, slots, data[0])
        compiled, programs, t_compile, temp = compiled_at[slots]
        banks = [_bank(lora, slots)] * chunks
        opts = [programs.init_opt(banks[0]) for _ in range(chunks)]

        def step(banks=banks, opts=opts, data=data, compiled=compiled, slots=slots):
            for c in range(len(data)):
                banks[c], opts[c], m = compiled(banks[c], opts[c], base, data[c], *_vec(slots), key)
            jax.block_until_ready(m)

        step()  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) / s)
        with limits.xla_only():  # per speaker-step, the native kernels' products counted too
            bank = _bank(lora, slots)
            lowered = programs.step.lower(
                bank, programs.init_opt(bank), base, data[0], *_vec(slots), jax.random.key(0)
            )
        flops = limits.flops(lowered) / slots
        found[s] = {"times": times, "temp": temp, "slots": slots, "compile": t_compile}
        found[s]["flops"] = flops
        print(
            f"{s:5d} speakers ({chunks} x {slots} slots): {report.median(times):.4f} s per "
            f"step per speaker, temp {temp} bytes, compile {t_compile:.1f} s",
            flush=True,
        )
    rate = limits.matmul_rate(repeats=5)
    rows = _rows(found, per_speaker_state, rate)
    return rows, _setting(args, cfg, lora, per_speaker_state, found)


def _rows(found: dict[int, dict], per_speaker_state: int, rate: float) -> list[report.Row]:
    one = min(found)
    rows = []
    for s, f in sorted(found.items()):
        if s == one:
            continue
        rows.append(
            report.row(
                f"time per step per speaker, {s} speakers ({-(-s // f['slots'])} x "
                f"{f['slots']} slots)",
                f["times"],
                found[one]["times"],
                peer_name=f"bank of {one}",
                unit="s",
                better="lower",
                limit=f["flops"] / report.median(f["times"]) / rate,
                limit_name=limits.describe_rate(rate),
            )
        )
        temp, temp1 = f["temp"], found[one]["temp"]
        if temp is not None and temp1:
            rows.append(
                report.Row(
                    f"compiled temporaries per speaker, {s} speakers",
                    temp / f["slots"],
                    temp1 / found[one]["slots"],
                    peer_name=f"bank of {one}",
                    unit="bytes",
                    better="lower",
                    runs=1,
                    note=f"program of {f['slots']} slots: {temp / 2**20:.0f} MiB; state of all "
                    f"{s} speakers {s * per_speaker_state / 2**20:.1f} MiB",
                )
            )
    return rows


def _setting(args, cfg, lora, per_speaker_state: int, found: dict) -> list[str]:
    seconds = {f["slots"]: f["compile"] for f in found.values()}
    compiles = ", ".join(f"{n} slots {t:.0f} s" for n, t in seconds.items())
    return [
        f"NF4 Whisper tiny.en, {args.window:g} s window ({cfg.max_source_positions} encoder "
        f"positions), {args.tokens} decoder tokens, batch {args.batch} per speaker, random "
        f"inputs; LoRA r 8 ({lora_lib.num_params(lora):,} parameters); AdamW; speakers "
        f"{','.join(map(str, args.speakers))} in chunks of at most {args.chunk} slots; median of "
        f"{args.repeats} steps after a warm-up step; device {jax.devices()[0].platform}",
        f"adapters + AdamW state: {per_speaker_state / 2**20:.2f} MiB per speaker; compile "
        f"(once per slot count, excluded): {compiles}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", default="1,8,64,512")
    ap.add_argument("--chunk", type=int, default=64, help="most slots per compiled program")
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the rows here (for bench/run_all.py)")
    args = ap.parse_args()
    args.speakers = sorted(int(x) for x in args.speakers.split(","))
    rows, setting = measure(args)
    report.emit(rows, setting, "python bench/bench_scaling.py", args.json)


if __name__ == "__main__":
    main()
