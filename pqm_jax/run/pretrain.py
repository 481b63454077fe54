"""Training a model from scratch (the `pretrain` stage), for families that need it.

No pretrained Conformer can be downloaded here, so a run whose family `trains_from_scratch`
(model.name "conformer" with no model.path) first trains one: every weight in full precision,
on the speaker-independent pool, with SpecAugment and dropout, selected by dev token accuracy,
through the same checkpointed and sharded loop as stage 2 (`stages.train_tree` with
`trainable="backbone"`). The family saves the result into `<workdir>/pretrain`, a model folder
that later runs can name in model.path.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from pqm_jax import checkpoint, sharding
from pqm_jax.data import corpus as corpus_lib
from pqm_jax.models import family as family_lib
from pqm_jax.run import config as config_lib
from pqm_jax.run import context, metrics, stages
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.train import examples as ex


def check_path(spec: family_lib.ModelSpec) -> None:
    """Raises ConfigError (naming the fix) when `model.path` names no saved model."""
    if spec.path:
        try:
            spec.family.check_folder(pathlib.Path(spec.path))
        except (FileNotFoundError, ValueError) as e:
            raise config_lib.ConfigError(f"model.path={spec.path!r}: {e}") from None


def needed(config: config_lib.RunConfig, workdir: workdir_lib.Workdir) -> bool:
    """True when this run must train its model (the family trains from scratch, none saved)."""
    family = config.model.family
    if not family.trains_from_scratch(config.model):
        return False
    try:
        family.check_folder(workdir.pretrain)
    except (FileNotFoundError, ValueError):
        return True
    return False


def train(
    config: config_lib.RunConfig, workdir: workdir_lib.Workdir, *, progress: bool = True
) -> dict[str, Any]:
    """Trains this run's model into `<workdir>/pretrain` (resumably).

    Returns:
      the training info (steps, best step, best dev token accuracy).
    """
    spec, family = config.model, config.model.family
    report = context.input_report(config)
    writer = metrics.MetricsWriter(workdir, enabled=jax.process_index() == 0)
    try:
        corpus = corpus_lib.build(config.data, workdir.data, report=report)
        texts = [e.text for e in corpus.si_train]
        if not texts:
            raise config_lib.ConfigError(
                f"the {family.name} is trained on the speaker-independent pool, which is empty; "
                "configure data.si_voices / data.si_root, or name a trained model in model.path"
            )
        key = context.key(config, context.KEY_PRETRAIN)
        params, cfg, tokenizer = family.scratch(spec, texts, key=key)
        mesh_config = config.mesh.with_rules(family.shard_rules)
        run = context.Run(
            config=config,
            workdir=workdir,
            mesh=sharding.make_mesh(mesh_config),
            mesh_config=mesh_config,
            base={},
            base_shardings={},
            step_config=context.step_config(config, cfg, pretraining=True),
            tokenizer=tokenizer,
            store=context.store(config, workdir, cfg.n_mels, report),
            writer=writer,
            progress=progress,
        )
        writer.event("pretrain", model=family.name, corpus=corpus.summary())
        return _train(run, family, params, tokenizer, corpus)
    finally:
        writer.close()


def _train(run: context.Run, family, params, tokenizer, corpus: corpus_lib.Corpus) -> dict:
    spec = run.config.pretrain
    train_ex = run.examples(corpus.si_train, desc="features pretrain")
    if train_ex is None:
        raise config_lib.ConfigError("no usable utterance in the pretraining pool")
    dev = run.examples(corpus.si_dev, desc="features pretrain dev")
    schedule = stages.Schedule(
        name="pretrain",
        purpose=context.KEY_PRETRAIN,
        batch_size=spec.batch_size,
        eval_batch_size=spec.eval_batch_size,
        total_steps=spec.steps,
        steps_per_epoch=ex.steps_per_epoch(len(train_ex), spec.batch_size),
        eval_every=spec.eval_every or spec.steps,
        ckpt_every=spec.ckpt_every,
        optim=spec.optim,
    )
    best, info = stages.train_tree(run, params, train_ex, dev, schedule)
    cfg = run.step_config.model
    family.save(run.workdir.pretrain, jax.device_get(best), cfg, tokenizer, info)
    checkpoint.Series(run.workdir.ckpt(schedule.name)).clear()
    return info
