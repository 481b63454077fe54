"""Training a Conformer AED from scratch (the `pretrain` stage), and its model folder.

No pretrained Conformer can be downloaded here, so a run with model.name "conformer" and no
model.path first trains one: every weight in full precision, on the speaker-independent pool,
with SpecAugment and dropout, selected by dev token accuracy, through the same checkpointed
and sharded loop as stage 2 (`stages.train_tree` with `trainable="backbone"`). The result is a
model folder that later runs can name in model.path:

    pretrain/model.json   the ConformerConfig
    pretrain/tokens.txt   the character vocabulary (ESPnet token list)
    pretrain/params/      the float32 weights and the training info (checkpoint)

The folder is complete once model.json exists (written last).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING, Any

import jax

from pqm_jax import checkpoint
from pqm_jax.models import conformer
from pqm_jax.models import conformer_inputs as inputs
from pqm_jax.train import config as config_lib
from pqm_jax.train import examples as ex
from pqm_jax.train import stages, steps

if TYPE_CHECKING:
    from pqm_jax.train import corpus as corpus_lib
    from pqm_jax.train import pipeline

FOLDER = pathlib.Path("pretrain")
N_MELS = 80
KEY_PRETRAIN = 4


def folder(spec: config_lib.ModelSpec, workdir: str | pathlib.Path | None) -> pathlib.Path:
    """The Conformer's model folder: `spec.path`, else `<workdir>/pretrain`."""
    if spec.path:
        return pathlib.Path(spec.path)
    if workdir is None:
        raise ValueError("a Conformer run without model.path needs its work folder")
    return pathlib.Path(workdir) / FOLDER


def check_path(spec: config_lib.ModelSpec) -> None:
    """Raises ConfigError (naming the fix) when `model.path` names no trained Conformer."""
    if spec.path and not (pathlib.Path(spec.path) / "model.json").is_file():
        raise config_lib.ConfigError(
            f"model.path={spec.path!r} holds no trained Conformer (no model.json); point it at "
            "the pretrain/ folder of a finished Conformer run, or leave it empty to train one"
        )


def needed(spec: config_lib.ModelSpec, workdir: pathlib.Path) -> bool:
    """True when this run must train its Conformer (no model.path, none trained yet)."""
    return (
        spec.name == "conformer"
        and not spec.path
        and not (workdir / FOLDER / "model.json").is_file()
    )


def vocabulary(corpus: corpus_lib.Corpus) -> inputs.CharVocab:
    """Characters of the pretraining text (the speaker-independent pool)."""
    texts = [inputs.normalize(e.text) for e in corpus.si_train]
    if not texts:
        raise config_lib.ConfigError(
            "the Conformer is trained on the speaker-independent pool, which is empty; "
            "configure data.si_voices / data.si_root, or name a trained model in model.path"
        )
    return inputs.CharVocab.build(texts)


def model_config(spec: config_lib.ModelSpec, vocab: inputs.CharVocab) -> conformer.ConformerConfig:
    """The architecture of `spec` (ModelSpec's d_model, layers, heads, decoder_layers,
    kernel_size; feed-forwards 4 x d_model; LayerNorm in the convolution module)."""
    return conformer.ConformerConfig(
        vocab_size=vocab.size,
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


def step_config(config: config_lib.RunConfig, model: Any, *, pretraining: bool) -> steps.StepConfig:
    """What a Conformer step computes: pretraining trains the whole model with dropout and
    SpecAugment; the adapter stages train LoRA over the frozen base, without either."""
    spec = config.model
    if not pretraining:
        return steps.StepConfig(model=model, dtype=spec.dtype, ctc_weight=spec.ctc_weight)
    return steps.StepConfig(
        model=model,
        dtype=spec.dtype,
        dropout=config.pretrain.dropout,
        trainable="backbone",
        ctc_weight=spec.ctc_weight,
        spec_augment=config.pretrain.spec_augment,
    )


def train(run: pipeline.Run, corpus: corpus_lib.Corpus, vocab: inputs.CharVocab) -> dict:
    """Trains the Conformer of `run.step_config.model` and writes the model folder.

    Returns:
      the training info (steps, best step, best dev token accuracy).
    """
    spec = run.config.pretrain
    cfg = run.step_config.model
    key = jax.random.fold_in(jax.random.key(run.config.seed), KEY_PRETRAIN)
    params = conformer.init(cfg, key=key)
    train_ex = run.examples(corpus.si_train, desc="features pretrain")
    if train_ex is None:
        raise config_lib.ConfigError("no usable utterance in the pretraining pool")
    dev = run.examples(corpus.si_dev, desc="features pretrain dev")
    schedule = stages.Schedule(
        name="pretrain",
        purpose=KEY_PRETRAIN,
        batch_size=spec.batch_size,
        eval_batch_size=spec.eval_batch_size,
        total_steps=spec.steps,
        steps_per_epoch=ex.steps_per_epoch(len(train_ex), spec.batch_size),
        eval_every=spec.eval_every or spec.steps,
        ckpt_every=spec.ckpt_every,
        optim=spec.optim,
    )
    best, info = stages.train_tree(run, params, train_ex, dev, schedule)
    save(run.workdir / FOLDER, jax.device_get(best), cfg, vocab, info)
    checkpoint.Series(run.workdir / "ckpt" / schedule.name).clear()
    return info


def save(
    path: pathlib.Path,
    params: dict,
    cfg: conformer.ConformerConfig,
    vocab: inputs.CharVocab,
    info: dict | None = None,
) -> None:
    """Writes a model folder (model.json last: its presence marks a complete folder)."""
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path / "params", {"params": params, "info": checkpoint.Json(info or {})})
    vocab.save(path / "tokens.txt")
    tmp = path / "model.json.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    tmp.replace(path / "model.json")


def load(path: str | pathlib.Path) -> tuple[dict, conformer.ConformerConfig, inputs.CharTokenizer]:
    """(float32 params, ConformerConfig, CharTokenizer) of a model folder.

    Raises:
      FileNotFoundError: `path` is not a complete model folder (names the fix).
    """
    path = pathlib.Path(path)
    if not (path / "model.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no trained Conformer (no model.json); point model.path at the "
            "pretrain/ folder of a finished Conformer run, or leave it empty to train one"
        )
    cfg = conformer.ConformerConfig(**json.loads((path / "model.json").read_text()))
    vocab = inputs.CharVocab.load(path / "tokens.txt")
    if vocab.size != cfg.vocab_size:
        raise ValueError(f"{path}: tokens.txt has {vocab.size} tokens, model.json {cfg.vocab_size}")
    abstract = jax.eval_shape(lambda: conformer.init(cfg, key=jax.random.key(0)))
    params = checkpoint.restore(path / "params", {"params": abstract})["params"]
    return params, cfg, inputs.CharTokenizer(vocab)
