"""Long-form throughput: minutes of real speech transcribed whole, ours against transformers and
CTranslate2 on the same audio and weights (tiny.en, float32, greedy, timestamps on).

    python bench/bench_longform.py                      # 3 files of ~2 min, FSDD phrases
    python bench/bench_longform.py --files 2 --seconds 60 --repeats 2 --json rows.json

Audio: FSDD digit phrases of one speaker with 3-5 s pauses (tests/references/long_audio.py),
one file per speaker; every engine stops a window after 120 new tokens. Engines (round-robin `--repeats` times, median; compilation and a warm-up excluded):
  jax-seq       WhisperModel.transcribe_long, sequential (files advance together, batch = files)
  jax-chunked   WhisperModel.transcribe_long, 30 s chunks with 5 s strides, batch `--batch`
  hf-seq        transformers long-form generate (the same sequential algorithm), batch = files
  hf-pipeline   transformers' ASR pipeline, chunk_length_s 30, stride 5, batch `--batch`
  ct2-chunked   CTranslate2 generate with timestamps over the same chunks as jax-chunked
                (CTranslate2 has no long-form loop of its own; faster-whisper adds one)
Printed: seconds of audio per second of compute (higher is faster) and the ratios ours / peer.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import report

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

SPEAKERS = ("theo", "nicolas", "jackson", "george", "lucas", "yweweler")
MAX_NEW = 120  # tokens per window, every engine (tiny.en loops on some digit runs)
PAIRS = (("jax-seq", "hf-seq"), ("jax-chunked", "hf-pipeline"), ("jax-chunked", "ct2-chunked"))


def _audio(n: int, seconds: float) -> list[np.ndarray]:
    from references import long_audio

    from pqm_jax import resources

    root = resources.shared_data_dir() / "fsdd"
    if not (root / "recordings").is_dir():
        raise SystemExit(f"FSDD not found under {root}; set $PQM_SHARED_DATA")
    return [
        long_audio.phrases(
            root, speaker=SPEAKERS[i % len(SPEAKERS)], seconds=seconds, seed=1 + i, pause_s=(3, 5)
        )[0]
        for i in range(n)
    ]


def _hf_model(threads: int):
    import tempfile

    import torch
    import transformers

    torch.set_num_threads(threads)
    out = pathlib.Path(tempfile.mkdtemp(prefix="tiny-en-hf-"))
    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "ct2_to_hf.py"
    os.system(f"{sys.executable} {script} {out} --source tiny.en > /dev/null")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    fe = transformers.WhisperFeatureExtractor(feature_size=80)  # tiny.en's
    tok = transformers.WhisperTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    tok.pad_token = "<|endoftext|>"  # the pipeline batches only with a pad token
    return model, fe, tok


def engines(names: list[str], audios: list[np.ndarray], batch: int, threads: int) -> dict:
    import pqm_jax

    runs = {}
    model = pqm_jax.load_model("tiny.en")
    if "jax-seq" in names:
        runs["jax-seq"] = lambda: [
            t.text
            for t in model.transcribe_long(
                audios, batch_size=len(audios), progress=False, max_new_tokens=MAX_NEW
            )
        ]
    if "jax-chunked" in names:
        runs["jax-chunked"] = lambda: [
            t.text
            for t in model.transcribe_long(
                audios, mode="chunked", batch_size=batch, progress=False, max_new_tokens=MAX_NEW
            )
        ]
    if {"hf-seq", "hf-pipeline"} & set(names):
        import torch
        import transformers

        hf, fe, tok = _hf_model(threads)

        def hf_seq():
            torch.set_num_threads(threads)
            inputs = fe(audios, sampling_rate=16_000, return_tensors="pt", truncation=False,
                        padding="longest", return_attention_mask=True)  # fmt: skip
            with torch.inference_mode():
                out = hf.generate(inputs.input_features, attention_mask=inputs.attention_mask,
                                  return_timestamps=True, max_new_tokens=MAX_NEW)  # fmt: skip
            return tok.batch_decode(out, skip_special_tokens=True)

        pipe = transformers.pipeline(
            "automatic-speech-recognition", model=hf, tokenizer=tok, feature_extractor=fe,
            chunk_length_s=30, stride_length_s=5, batch_size=batch, device=-1,
        )  # fmt: skip

        def hf_pipeline():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                out = pipe([a.copy() for a in audios], return_timestamps=True,
                           generate_kwargs={"max_new_tokens": MAX_NEW})  # fmt: skip
            return [o["text"] for o in out]

        if "hf-seq" in names:
            runs["hf-seq"] = hf_seq
        if "hf-pipeline" in names:
            runs["hf-pipeline"] = hf_pipeline
    if "ct2-chunked" in names:
        runs["ct2-chunked"] = _ct2_chunked(model, audios, batch, threads)
    return runs


def _ct2_chunked(model, audios, batch: int, threads: int):
    import ctranslate2

    from pqm_jax import resources
    from pqm_jax.models.whisper import longform

    ct2 = ctranslate2.models.Whisper(
        str(resources.tiny_en_dir()), device="cpu", compute_type="float32", intra_threads=threads
    )
    chunks = longform.plan_chunks([len(a) for a in audios], rate=16_000, chunk_s=30, stride_s=5)
    tok = model.tokenizer
    prompt = [tok.special.sot]  # English-only: timestamps on

    def run():
        texts = []
        for b in range(0, len(chunks), batch):
            part = chunks[b : b + batch]
            mel = model.features([audios[c.file][c.start : c.stop] for c in part])
            res = ct2.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)),
                [prompt] * len(part),
                beam_size=1,
                max_length=MAX_NEW + len(prompt),
            )
            texts += [tok.decode(r.sequences_ids[0]) for r in res]
        return texts

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--engines", default="jax-seq,jax-chunked,hf-seq,hf-pipeline,ct2-chunked")
    ap.add_argument("--json", help="also write report.Rows here")
    args = ap.parse_args(argv)
    names = args.engines.split(",")
    audios = _audio(args.files, args.seconds)
    audio_s = sum(len(a) for a in audios) / 16_000
    print(f"{args.files} files, {audio_s:.0f} s of audio; threads {args.threads}")
    runs = engines(names, audios, args.batch, args.threads)
    for fn in runs.values():  # compile + warm up
        fn()
    times: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    speed = {n: audio_s / statistics.median(v) for n, v in times.items()}
    for name, v in speed.items():
        print(f"{name:12s} {v:8.1f} s of audio per s  (median of {args.repeats})")
    rows = []
    for ours, peer in PAIRS:
        if ours in speed and peer in speed:
            print(f"{ours} / {peer}: {speed[ours] / speed[peer]:.2f}x")
            rows.append(
                report.Row(
                    figure=f"long-form {ours} vs {peer}, {audio_s:.0f} s audio",
                    ours=speed[ours],
                    peer=speed[peer],
                    peer_name=peer,
                    unit="audio s/s",
                    better="higher",
                    runs=args.repeats,
                )
            )
    if args.json:
        report.dump(args.json, rows, setting=[f"{args.files} files x {args.seconds:.0f} s"])


if __name__ == "__main__":
    main()
