"""Converts a CTranslate2 Whisper folder to a Hugging Face one (the PyTorch reference route).

    python scripts/ct2_to_hf.py OUT_DIR [--source tiny.en | base | CT2_DIR]

Writes `model.safetensors` (float32), `config.json`, `generation_config.json` (token ids and
suppress lists from the CTranslate2 config and tokenizer) and `tokenizer.json`; the result loads
with `transformers.WhisperForConditionalGeneration.from_pretrained(OUT_DIR)`.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

from pqm_jax import resources
from pqm_jax.convert import engines
from pqm_jax.models.whisper import ct2, hf
from pqm_jax.text import whisper_tokenizer as text


def _read(source: str):
    if source == "tiny.en":
        model_dir = resources.tiny_en_dir()
        return model_dir, ct2.load(model_dir)
    if source == "base":
        return resources.base_dir(), ct2.load_parts(resources.base_parts())
    return pathlib.Path(source), ct2.load(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--source", default="tiny.en", help="tiny.en, base or a CT2 folder")
    args = parser.parse_args()
    model_dir, (params, config, ct2_config) = _read(args.source)
    tok = text.load(model_dir)
    tokens = engines.token_ids(tok)
    generation = engines.generation_config(tok, config, ct2_config.get("alignment_heads"))
    hf.save(args.out_dir, params, config, hf_config=tokens, generation_config=generation)
    shutil.copy(model_dir / "tokenizer.json", args.out_dir / "tokenizer.json")
    print(f"wrote {args.out_dir} ({config})")


if __name__ == "__main__":
    main()
