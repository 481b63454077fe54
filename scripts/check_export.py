"""Exports one speaker of a run to CTranslate2 (float32, float16, int8) and Hugging Face folders and
checks that those engines' greedy tokens on the speaker's test utterances equal ours on the same
merged weights (float16: on the weights rounded to float16).

    python scripts/check_export.py RUN_DIR SPEAKER [--window run|full] [--out DIR]

Prints one line per engine: identical transcripts / utterances. Needs ctranslate2, and torch +
transformers for the Hugging Face check.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax.convert import engines, merged
from pqm_jax.data import issues
from pqm_jax.eval import run as eval_run
from pqm_jax.models.whisper import decoding
from pqm_jax.run import results


def _ours(params, mel, config, options) -> list[list[int]]:
    r = decoding.generate(jax.tree.map(jnp.asarray, params), mel, config=config, options=options)
    tokens, lengths = np.asarray(r.tokens), np.asarray(r.lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(len(tokens))]


def _ct2(folder, mel, prompt, new_tokens: int) -> list[list[int]]:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(folder), device="cpu")
    out = model.generate(  # CTranslate2 generates at most max_length / 2 tokens
        ctranslate2.StorageView.from_array(mel),
        [prompt] * len(mel),
        beam_size=1,
        max_length=2 * new_tokens,
    )
    return [list(r.sequences_ids[0]) for r in out]


def _hf(folder, mel, eot: int, new_tokens: int) -> list[list[int]]:
    import torch
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(folder)).eval()
    generation = transformers.GenerationConfig.from_pretrained(str(folder))
    generation.max_new_tokens, generation.max_length = new_tokens, None
    with torch.no_grad():
        out = model.generate(torch.from_numpy(mel), generation_config=generation, do_sample=False)
    return [[t for t in row if t < eot] for row in out.tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("speaker")
    parser.add_argument("--window", default="run", choices=("run", "full"))
    parser.add_argument("--out", type=pathlib.Path, help="keep the folders here")
    args = parser.parse_args()
    res = results.load(args.run)
    params, cfg = res.merged(args.speaker, window=args.window)
    window_s = None if args.window == "run" else cfg.max_source_positions / 50
    data = eval_run.test_set(res, [args.speaker], issues.InputReport(), window_s=window_s)
    tok = res.tokenizer()
    new = min(res.config.model.max_tokens, cfg.max_target_positions) - len(tok.prompt())
    options = decoding.DecodeOptions(
        prompt=tuple(tok.prompt()),
        eot=tok.special.eot,
        suppress=tok.suppress_tokens,
        begin_suppress=tok.begin_suppress_tokens,
        max_new_tokens=new,
    )
    source = engines.model_folder(res.config.model.name, res.config.model.path)
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="pqm_check_export_"))
    ours = _ours(params, data.mel, cfg, options)
    n = len(ours)
    for quantization in ("float32", "float16", "int8"):
        folder = engines.write_ct2(
            out / quantization, params, cfg, source=source, quantization=quantization
        )
        want = ours
        if quantization == "float16":
            want = _ours(merged.rounded(params, np.float16), data.mel, cfg, options)
        theirs = _ct2(folder, data.mel, tok.prompt(), new)
        same = sum(a == b for a, b in zip(theirs, want, strict=True))
        print(f"ctranslate2 {quantization}: {same}/{n} transcripts identical")
    folder = engines.write_hf(out / "hf", params, cfg, source=source)
    theirs = _hf(folder, data.mel, tok.special.eot, new)
    print(f"transformers: {sum(a == b for a, b in zip(theirs, ours, strict=True))}/{n} identical")
    print(f"folders in {out}")


if __name__ == "__main__":
    main()
