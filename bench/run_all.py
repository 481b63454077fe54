"""Every benchmark, one command: runs each section in its own process and writes BENCHMARKS.md.

    python bench/run_all.py [--quick] [--out BENCHMARKS.md] [--only nf4,forward,...]

Each section is a bench/bench_*.py script run with `--json FILE`; its rows (ours against a peer,
medians of several runs, see bench/report.py) become one table under the command that produced
it. A section that fails is reported as not measured, the others still run. `--quick` uses
smaller settings (a smoke run, not for quoting).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import report

ROOT = pathlib.Path(__file__).resolve().parent.parent

# name: (title, script, full arguments, --quick arguments)
SECTIONS = {
    "nf4": (
        "NF4 quantise / dequantise against bitsandbytes' CPU path",
        "bench/bench_nf4.py",
        "--size 4096 --repeats 7",
        "--size 1024 --repeats 3",
    ),
    "forward": (
        "NF4 against float32: forward pass and weight memory",
        "bench/bench_forward.py",
        "--window 30 --batch 1 --tokens 32 --repeats 7",
        "--window 4 --batch 1 --tokens 16 --repeats 3",
    ),
    "decode": (
        "Greedy decoding real-time factor against transformers and CTranslate2",
        "bench/bench_decode.py",
        "--clips 8 --batch 8 --repeats 3 --threads 0 "
        "--engines jax,jax-b1,jax-nf4,jax-nf4-b1,hf,hf-b1,ct2,ct2-b1,ct2-int8,ct2-int8-b1",
        "--clips 2 --batch 2 --repeats 2 --max-new 64 --threads 0 --engines jax,hf,ct2",
    ),
    "decode_sentences": (
        "Greedy decoding on longer sentences (LibriSpeech text, espeak-ng voices)",
        "bench/bench_decode.py",
        "--audio sentences --clips 8 --batch 8 --repeats 3 --threads 0 "
        "--engines jax,jax-b1,jax-nf4,jax-nf4-b1,hf,hf-b1,ct2,ct2-b1,ct2-int8,ct2-int8-b1",
        "--audio sentences --clips 2 --batch 2 --repeats 1 --max-new 64 --threads 2 "
        "--engines jax,ct2",
    ),
    "peft": (
        "Per-speaker adaptation against PyTorch + bitsandbytes NF4 + PEFT LoRA",
        "bench/bench_peft_peer.py",
        "--speakers 1,4,16 --steps 3 --batch 2 --window 2 --tokens 16 --repeats 3",
        "--speakers 2 --steps 1 --batch 1 --window 1 --tokens 8 --repeats 2",
    ),
    "scaling": (
        "Adaptation bank scaling: 1 to 512 speakers",
        "bench/bench_scaling.py",
        "--speakers 1,8,64,512 --chunk 64 --window 1 --tokens 8 --batch 1 --repeats 2",
        "--speakers 1,4 --chunk 4 --window 1 --tokens 8 --batch 1 --repeats 2",
    ),
    "bank_scale": (
        "Stage 3 at 1,000 and 10,000 speakers: memory, time, writing",
        "bench/bench_bank_scale.py",
        "--speakers 1000,10000 --budget_mb 512",
        "--speakers 20,60 --budget_mb 512",
    ),
    "longform": (
        "Long-form transcription against transformers (generate, pipeline) and CTranslate2",
        "bench/bench_longform.py",
        "--files 2 --seconds 60 --repeats 2",
        "--files 1 --seconds 40 --repeats 1 --engines jax-seq,hf-seq",
    ),
    "adapt_limit": (
        "Adaptation step against the machine's matmul rate; NF4 against float32; bfloat16",
        "bench/bench_adapt_limit.py",
        "--slots 1,16 --quant nf4,nf4-dense,none --dtype float32,bfloat16 --repeats 5",
        "--slots 1,2 --window 1 --tokens 8 --batch 1 --repeats 2",
    ),
    "attention": (
        "Encoder attention: the native kernels against XLA's formulation and torch SDPA; training steps",
        "bench/bench_attention.py",
        "--batch 8 --heads 6 --frames 1500 --repeats 5 --dtype float32,bfloat16 --grad "
        "--step-windows 8,30 --step-batch 8",
        "--batch 1 --heads 2 --frames 300 --repeats 2 --dtype float32 --grad",
    ),
    "lora_products": (
        "LoRA products by hand against autodiff of the plain formula: the 16-speaker step",
        "bench/bench_lora_products.py",
        "--slots 16 --repeats 5",
        "--slots 2 --repeats 2",
    ),
    "step_switches": (
        "The 16-speaker step with and without the gradient barrier and short-attention kernel",
        "bench/bench_step_switches.py",
        "--slots 16 --repeats 8",
        "--slots 2 --repeats 2",
    ),
    "conformer_limit": (
        "Conformer adaptation step against the machine's matmul rate; NF4; bfloat16",
        "bench/bench_adapt_limit.py",
        "--model conformer --slots 1,16 --window 2 --tokens 32 --batch 2 "
        "--quant nf4,nf4-dense,none --dtype float32,bfloat16 --repeats 4",
        "--model conformer --slots 1,2 --window 1 --tokens 16 --batch 1 --quant nf4,none "
        "--repeats 2",
    ),
    "conformer_switches": (
        "The 16-speaker Conformer step with and without the gradient barrier",
        "bench/bench_step_switches.py",
        "--model conformer --slots 16 --repeats 6",
        "--model conformer --slots 2 --repeats 2",
    ),
    "paged_bank": (
        "Decoding from a bank of 10,000 speakers: paged against in memory",
        "bench/bench_paged_bank.py",
        "--speakers 10000 --rank 32 --batch 8 --batches 20 --cache 64",
        "--speakers 200 --rank 4 --batch 4 --batches 3 --cache 8",
    ),
}


def command(script: str, args: list[str]) -> str:
    """The command line a reader can paste (run from the repository root)."""
    return " ".join(["python", script, *args])


def run_section(name: str, quick: bool, workdir: pathlib.Path, timeout: float) -> report.Section:
    """Runs one section's script in a fresh process; its log goes to `workdir/<name>.log`."""
    title, script, full, small = SECTIONS[name]
    args = (small if quick else full).split()
    out = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    print(f"== {name}: {command(script, args)}", flush=True)
    t = time.perf_counter()
    try:
        with open(log, "w") as f:
            proc = subprocess.run(
                [sys.executable, script, *args, "--json", str(out)],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        error = "" if proc.returncode == 0 else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - t
    if not error and not out.is_file():
        error = "no rows written"
    if error:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        print(f"   failed ({error}); log {log}", flush=True)
        return report.Section(title, command(script, args), (), (), f"{error}: {tail}", seconds)
    rows, setting = report.load(out)
    print(f"   {len(rows)} rows in {seconds:.0f} s", flush=True)
    return report.Section(title, command(script, args), rows, setting, "", seconds)


def _limits(when: str) -> dict[str, str]:
    """The machine's matmul rate and copy bandwidth (each section also measures its own, in its
    process, beside its figures: the rows' 'of machine limit' column)."""
    import limits

    rate, bandwidth = limits.matmul_rate(), limits.copy_bandwidth()
    return {
        f"matmul rate {when}": limits.describe_rate(rate),
        f"copy bandwidth {when}": f"{bandwidth / 1e9:.1f} GB/s (jitted x + 1, 64 MiB)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per section")
    ap.add_argument("--logs", help="keep the per-section logs in this folder")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    cmd = "python bench/run_all.py" + (" --quick" if args.quick else "")
    if args.only != ",".join(SECTIONS):
        cmd += f" --only {args.only}"
    machine = report.machine_info()
    machine |= _limits("at start")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pqm-bench-") as tmp:
        workdir = pathlib.Path(args.logs or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        sections = [run_section(n, args.quick, workdir, args.timeout) for n in names]
    if hasattr(os, "getloadavg"):
        machine["load average at end (1/5/15 min)"] = " / ".join(
            f"{x:.2f}" for x in os.getloadavg()
        )
    machine |= _limits("at end")
    machine["total wall time"] = f"{time.perf_counter() - t:.0f} s"
    text = report.document(sections, machine, cmd)
    pathlib.Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
