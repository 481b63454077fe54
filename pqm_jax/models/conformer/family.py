"""The Conformer AED as a model family: trained from scratch by a run (no pretrained Conformer
can be downloaded here), saved as a model folder that later runs name in `model.path`:

    model.json   the ConformerConfig
    tokens.txt   the character vocabulary (ESPnet token list)
    params/      the float32 weights and the training info (checkpoint)

The folder is complete once model.json exists (written last).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import checkpoint, errors, jsonio
from pqm_jax.models import family as family_lib
from pqm_jax.models.conformer import decoding, loss
from pqm_jax.models.conformer import model as conformer
from pqm_jax.text import char_tokenizer

N_MELS = 80
# Megatron-style split of the frozen base over "model": column-parallel q/k/v, first feed-forward
# and first pointwise convolution; row-parallel output projections; the token embedding by rows.
SHARD_RULES = (
    (r"(linear_q|linear_k|linear_v|w_1|pointwise_conv1)/kernel$", (None, "model")),
    (r"(linear_out|w_2|pointwise_conv2)/kernel$", ("model", None)),
    (r"^decoder/embed$", ("model", None)),
)


def model_config(spec: family_lib.ModelSpec, vocab_size: int) -> conformer.ConformerConfig:
    """The architecture of `spec` (d_model, layers, heads, decoder_layers, kernel_size;
    feed-forwards 4 x d_model; LayerNorm in the convolution module)."""
    return conformer.ConformerConfig(
        vocab_size=vocab_size,
        n_mels=N_MELS,
        d_model=spec.d_model,
        encoder_layers=spec.layers,
        encoder_heads=spec.heads,
        encoder_ffn=4 * spec.d_model,
        kernel_size=spec.kernel_size,
        conv_norm="layer_norm",
        decoder_layers=spec.decoder_layers,
        decoder_heads=spec.heads,
        decoder_ffn=4 * spec.d_model,
    )


def save(
    path: pathlib.Path,
    params: dict,
    cfg: conformer.ConformerConfig,
    vocab: char_tokenizer.CharVocab,
    info: dict | None = None,
) -> None:
    """Writes a model folder (model.json last: its presence marks a complete folder)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path / "params", {"params": params, "info": checkpoint.Json(info or {})})
    vocab.save(path / "tokens.txt")
    tmp = path / "model.json.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    tmp.replace(path / "model.json")


def load(
    path: str | pathlib.Path,
) -> tuple[dict, conformer.ConformerConfig, char_tokenizer.CharTokenizer]:
    """(float32 params, ConformerConfig, CharTokenizer) of a model folder.

    Raises:
      FileNotFoundError: `path` is not a complete model folder (names the fix).
    """
    path = pathlib.Path(path)
    FAMILY.check_folder(path)
    values = jsonio.read_object(path / "model.json", what="the Conformer's architecture")
    known = {f.name: f.type for f in dataclasses.fields(conformer.ConformerConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise jsonio.DamagedFile(f"{path / 'model.json'}: unknown keys {unknown}")
    ints = {k: int for k, t in known.items() if t in (int, "int")}
    jsonio.fields(values, ints, path / "model.json")
    cfg = conformer.ConformerConfig(**values)
    vocab = char_tokenizer.CharVocab.load(path / "tokens.txt")
    if vocab.size != cfg.vocab_size:
        raise ValueError(f"{path}: tokens.txt has {vocab.size} tokens, model.json {cfg.vocab_size}")
    abstract = jax.eval_shape(lambda: conformer.init(cfg, key=jax.random.key(0)))
    params = checkpoint.restore(path / "params", {"params": abstract})["params"]
    return params, cfg, char_tokenizer.CharTokenizer(vocab)


class ConformerFamily(family_lib.Family):
    name = "conformer"
    models = ("conformer",)
    config_type = conformer.ConformerConfig
    max_tokens = 2048  # characters
    lora_targets = conformer.ATTENTION_TARGETS
    quant_targets = conformer.QUANT_TARGETS
    shard_rules = SHARD_RULES
    takes_path = True

    def check(self, spec: family_lib.ModelSpec) -> None:
        super().check(spec)
        if spec.d_model % spec.heads:
            raise errors.ConfigError("model.d_model must be divisible by model.heads")

    def check_folder(self, folder: pathlib.Path) -> None:
        if not (pathlib.Path(folder) / "model.json").is_file():
            raise FileNotFoundError(
                f"{folder} holds no trained Conformer (no model.json); point model.path at the "
                "pretrain/ folder of a finished Conformer run, or leave it empty to train one"
            )

    def trains_from_scratch(self, spec: family_lib.ModelSpec) -> bool:
        return not spec.path

    def load(self, spec, *, seed: int, folder: pathlib.Path | None = None):
        del seed
        path = pathlib.Path(spec.path) if spec.path else folder
        if path is None:
            raise ValueError("a Conformer without model.path is read from its run's folder")
        return load(path)

    def scratch(self, spec, texts, *, key):
        """A random Conformer of `spec` with the character vocabulary of `texts`."""
        vocab = char_tokenizer.CharVocab.build([char_tokenizer.normalize(t) for t in texts])
        cfg = model_config(spec, vocab.size)
        return conformer.init(cfg, key=key), cfg, char_tokenizer.CharTokenizer(vocab)

    def save(self, folder, params, config, tokenizer, info):
        save(folder, params, config, tokenizer.vocab, info)

    def token_stats(
        self,
        params,
        lora,
        batch,
        *,
        model,
        dtype,
        dropout,
        rng,
        ctc_weight,
        spec_augment,
        freq_warp=0.0,
    ):
        return loss.token_stats(
            params,
            lora,
            batch,
            model=model,
            dtype=dtype,
            dropout=dropout,
            rng=rng,
            ctc_weight=ctc_weight,
            spec_augment=spec_augment,
            freq_warp=freq_warp,
        )

    def decode_options(
        self, tokenizer, spec, *, beam_size, max_new_tokens, max_repeats, max_period
    ) -> decoding.BeamOptions:
        del tokenizer, max_repeats, max_period  # the joint beam has no repetition guard
        return decoding.BeamOptions(
            beam=beam_size, ctc_weight=spec.ctc_weight, max_len=max_new_tokens
        )

    def generate(self, params, mel, *, config, options, lora, bank):
        feats, lens = loss.features(jnp.asarray(mel))
        kw = {"config": config, "options": options}
        if bank:
            out = decoding.beam_search_bank(params, feats, lens, lora, **kw)
        else:
            out = decoding.beam_search(params, feats, lens, lora=lora, **kw)
        return np.asarray(out[0]), np.asarray(out[1])


FAMILY = family_lib.register(ConformerFamily())
