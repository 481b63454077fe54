"""pqm: the command line of pqm-jax.

    pqm transcribe AUDIO... [--model tiny.en|base|PATH] [--quant nf4] [--run DIR --speaker NAME]
                            [--beam_size N] [--output_format txt|srt|vtt|json|all]
                            [--output_dir DIR] [--mode sequential|chunked] [--word_timestamps]
                            [--temperature T] [--compression_ratio_threshold X] ...
    pqm export --run DIR --speaker NAME --format peft|ct2|hf --out DIR
    pqm train --config CONFIG.py --workdir DIR      (the same program as train.py)
    pqm evaluate --workdir DIR                      (the same program as evaluate.py)

`transcribe` follows openai-whisper's and faster-whisper's command lines: one output file per
audio file and format, named after it, in --output_dir; audio of any length is transcribed
whole, with segment timestamps (`WhisperModel.transcribe_long`), and the temperature fallback
has openai-whisper's defaults. With --run and --speaker it decodes with that speaker's
personalised model (the run's quantised base and the speaker's stage-3 adapters).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from pqm_jax.text import subtitles

COMMANDS = {
    "transcribe": "transcribe audio files (a pretrained model, or one speaker of a run)",
    "export": "write one speaker's model for another engine (CTranslate2, transformers, PEFT)",
    "train": "train PQM: the same program as train.py (--helpfull lists its flags)",
    "evaluate": "score a run: the same program as evaluate.py",
}
FORMATS = ("txt", "srt", "vtt", "json")
EXPORTS = ("peft", "ct2", "hf")
# Hugging Face ids recorded in exported adapters, by model name
HF_IDS = {"tiny.en": "openai/whisper-tiny.en", "base": "openai/whisper-base"}


def _usage() -> str:
    lines = ["usage: pqm COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<11s} {text}" for name, text in COMMANDS.items()]
    lines += ["", "pqm COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(__doc__.strip() + "\n\n" + _usage())
        return
    command, rest = argv[1], argv[2:]
    if command == "train":
        from pqm_jax.commands import train

        train.entry("pqm train", ["pqm train", *rest])
    elif command == "evaluate":
        from pqm_jax.commands import evaluate

        evaluate.entry("pqm evaluate", ["pqm evaluate", *rest])
    elif command == "transcribe":
        transcribe(rest)
    elif command == "export":
        export(rest)
    else:
        sys.exit(f"pqm: unknown command {command!r}\n{_usage()}")


def _transcribe_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pqm transcribe",
        description="Transcribe audio files with Whisper, quantised or personalised.",
    )
    ap.add_argument("audio", nargs="+", help="audio files (any format soundfile reads, any rate)")
    ap.add_argument(
        "--model",
        default="tiny.en",
        help="tiny.en, base, a CTranslate2 or Hugging Face folder (default: tiny.en)",
    )
    ap.add_argument("--quant", default="none", help="none, nf4, fp4 or int8 (default: none)")
    ap.add_argument("--run", help="a run folder (train.py --workdir): use its model")
    ap.add_argument("--speaker", help="with --run: decode with this speaker's adapters")
    ap.add_argument("--beam_size", type=int, default=1, help="1 = greedy (default: 1)")
    ap.add_argument("--batch_size", type=int, default=8, help="windows per decoding call")
    ap.add_argument(
        "--output_format",
        default="txt",
        choices=(*FORMATS, "all"),
        help="txt: a line per segment; srt, vtt: subtitles; json: text, segments with times "
        "and scores, file, model and speaker; all: every one (default: txt)",
    )
    ap.add_argument(
        "--mode",
        default="sequential",
        choices=("sequential", "chunked"),
        help="sequential: seek window by window on the timestamps (openai-whisper); chunked: "
        "overlapping 30 s chunks decoded as one batch (transformers' pipeline; words at "
        "chunk edges may differ) (default: sequential)",
    )
    ap.add_argument(
        "--without_timestamps",
        action="store_true",
        help="decode one window per file without timestamps (audio past 30 s is cut)",
    )
    ap.add_argument(
        "--word_timestamps",
        action="store_true",
        help="time each word from cross-attention (json gains segments[].words; sequential)",
    )
    ap.add_argument("--temperature", type=float, default=0.0, help="first temperature (0)")
    ap.add_argument(
        "--temperature_increment_on_fallback",
        type=_optional_float,
        default=0.2,
        help="temperature step of the fallback up to 1.0; None: no fallback (default: 0.2)",
    )
    ap.add_argument(
        "--compression_ratio_threshold",
        type=_optional_float,
        default=2.4,
        help="redecode a window whose gzip compression ratio is higher; None: never (2.4)",
    )
    ap.add_argument(
        "--logprob_threshold",
        type=_optional_float,
        default=-1.0,
        help="redecode a window whose average log-probability is lower; None: never (-1.0)",
    )
    ap.add_argument(
        "--no_speech_threshold",
        type=_optional_float,
        default=0.6,
        help="skip a window with a higher no-speech probability (and a low log-probability); "
        "None: never (0.6)",
    )
    ap.add_argument("--output_dir", default=".", help="folder for the outputs (default: .)")
    ap.add_argument("--verbose", action="store_true", help="also print each transcript")
    return ap


def _optional_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def _temperatures(start: float, step: float | None) -> tuple[float, ...]:
    """openai-whisper's fallback ladder: start, start + step, ... up to 1.0."""
    if step is None or step <= 0:
        return (start,)
    n = round((1.0 - start) / step)
    return tuple(round(start + i * step, 6) for i in range(n + 1)) if n > 0 else (start,)


def _model_of_run(run_dir: str, speaker: str | None):
    """(WhisperModel of the run's quantised base, the speaker's adapters or None)."""
    from pqm_jax import api
    from pqm_jax.run import results

    res = results.load(run_dir)
    if res.config.model.family.name != "whisper":
        sys.exit(f"pqm transcribe: {run_dir} is a {res.config.model.name} run; only Whisper runs")
    params, cfg = res.model()
    model = api.WhisperModel(params=params, config=cfg, tokenizer=res.tokenizer())
    if speaker is None:
        return model, None
    names = res.speakers()
    if speaker not in names:
        known = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        sys.exit(f"pqm: speaker {speaker!r} is not in {run_dir} (its speakers: {known})")
    return model, res.speaker_lora(speaker)


def transcribe(argv: list[str]) -> list[pathlib.Path]:
    """`pqm transcribe`; returns the files written."""
    args = _transcribe_parser().parse_args(argv)
    if args.speaker and not args.run:
        sys.exit("pqm transcribe: --speaker needs --run DIR (the run that adapted it)")
    missing = [a for a in args.audio if not pathlib.Path(a).is_file()]
    if missing:
        sys.exit(f"pqm transcribe: no such audio file: {', '.join(missing)}")
    from pqm_jax import api

    if args.run:
        if args.quant != "none":
            sys.exit("pqm transcribe: --quant comes from the run (its config) with --run")
        model, adapters = _model_of_run(args.run, args.speaker)
        source = args.run
    else:
        model = api.load_model(args.model, quant=None if args.quant == "none" else args.quant)
        adapters, source = None, args.model
    if args.without_timestamps:
        texts = model.transcribe(
            args.audio, beam_size=args.beam_size, batch_size=args.batch_size, adapters=adapters
        )
        found = [(t, []) for t in texts]
    else:
        long = model.transcribe_long(
            args.audio,
            mode=args.mode,
            beam_size=args.beam_size,
            batch_size=args.batch_size,
            adapters=adapters,
            temperatures=_temperatures(args.temperature, args.temperature_increment_on_fallback),
            compression_ratio_threshold=args.compression_ratio_threshold,
            logprob_threshold=args.logprob_threshold,
            no_speech_threshold=args.no_speech_threshold,
            word_timestamps=args.word_timestamps,
        )
        found = [(t.text, list(t.segments)) for t in long]
    out_dir = pathlib.Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = FORMATS if args.output_format == "all" else (args.output_format,)
    written = []
    for path, (text, segments) in zip(args.audio, found, strict=True):
        stem = out_dir / pathlib.Path(path).stem
        extra = {"audio": str(path), "model": source, "speaker": args.speaker}
        for fmt in formats:
            if fmt in ("srt", "vtt") and args.without_timestamps:
                sys.exit(f"pqm transcribe: --output_format {fmt} needs timestamps")
            target = stem.with_suffix("." + fmt)
            body = subtitles.render(fmt, segments, text=text, extra=extra)
            target.write_text(body, encoding="utf-8")
            written.append(target)
        if args.verbose:
            for seg in segments:
                print(
                    f"[{subtitles.timestamp(seg.start)} --> {subtitles.timestamp(seg.end)}] "
                    f"{seg.text}"
                )
            if not segments:
                print(f"{path}: {text}")
    print(f"pqm transcribe: {len(found)} file(s) -> {out_dir} ({', '.join(formats)})")
    return written


def _export_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pqm export",
        description="Write one speaker's personalised model (or adapters) for another engine.",
    )
    ap.add_argument("--run", required=True, help="a run folder (train.py --workdir)")
    ap.add_argument("--speaker", required=True, help="the adapted speaker")
    ap.add_argument(
        "--format",
        default="peft",
        choices=EXPORTS,
        help="peft: the speaker's adapters as a Hugging Face PEFT LoRA folder "
        "(PeftModel.from_pretrained); ct2: a CTranslate2 Whisper folder with the adapters "
        "merged (ctranslate2.models.Whisper, faster_whisper.WhisperModel); hf: a Hugging Face "
        "folder with the adapters merged (WhisperForConditionalGeneration.from_pretrained) "
        "(default: peft)",
    )
    ap.add_argument("--out", required=True, help="folder to write")
    ap.add_argument(
        "--ct2_quantization",
        default="float16",
        choices=("float16", "int8", "float32"),
        help="with --format ct2: the weights' type in model.bin (default: float16)",
    )
    ap.add_argument(
        "--window",
        default="full",
        choices=("full", "run"),
        help="with ct2/hf: the encoder window of the exported model; full: the backbone's "
        "(Whisper's 30 s, what faster-whisper and transformers' pipeline feed); run: the "
        "run's audio window, exactly the model the evaluation scored (default: full)",
    )
    return ap


def export(argv: list[str]) -> pathlib.Path:
    """`pqm export`; returns the folder written."""
    args = _export_parser().parse_args(argv)
    from pqm_jax.run import results

    try:
        res = results.load(args.run)
    except FileNotFoundError as e:
        sys.exit(f"pqm export: {e}")
    if args.speaker not in res.speakers():
        names = res.speakers()
        known = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") or "none yet"
        sys.exit(
            f"pqm export: speaker {args.speaker!r} is not in {args.run} (its speakers: {known})"
        )
    if args.format == "peft":
        out = _export_peft(res, args)
    else:
        out = _export_merged(res, args)
    print(f"pqm export: {args.speaker} of {args.run} -> {out} ({args.format})")
    return out


def _export_peft(res, args) -> pathlib.Path:
    from pqm_jax.convert import peft as peft_io
    from pqm_jax.run import context

    name = res.config.model.path or res.config.model.name
    return peft_io.export(
        res.speaker_lora(args.speaker),
        args.out,
        config=context.lora_config(res.config),
        base_model_name_or_path=HF_IDS.get(name, name),
    )


def _export_merged(res, args) -> pathlib.Path:
    """The speaker's PQM model, adapters merged, as a CTranslate2 or Hugging Face folder."""
    from pqm_jax.convert import engines

    spec = res.config.model
    if spec.family.name != "whisper":
        sys.exit(
            f"pqm export: {args.run} is a {spec.name} run; --format {args.format} writes "
            "Whisper models only (--format peft exports its adapters)"
        )
    params, cfg = res.merged(args.speaker, window=args.window)
    source = engines.model_folder(spec.name, spec.path)
    if args.format == "ct2":
        return engines.write_ct2(
            args.out, params, cfg, source=source, quantization=args.ct2_quantization
        )
    return engines.write_hf(args.out, params, cfg, source=source)


if __name__ == "__main__":
    main()
