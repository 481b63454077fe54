"""A PQM run in a work folder: [pretrain ->] quantise -> stage 2 -> stage 3, then read back.

Modules (import the one you need):
  config     typed run configuration built from `configs/*.py` (ConfigError names bad keys)
  workdir    the run folder's layout: every path a run reads or writes
  pipeline   `run_pipeline`: resumable orchestration of the stages
  context    `Run`: what the stages share (mesh, placed base, feature cache, metrics)
  backbone   the model of `model.*` (through its family) and the frozen quantised base
  pretrain   training a model from scratch, for families that need it (the Conformer)
  stages     checkpointed training loop (pretrain, stage 2) and the stage-3 driver
  featurize  entries -> training examples (cached log-mel + token ids with loss weights)
  results    reading a run back: base, adapters, one speaker, the bank, splits, features
  metrics    metrics.jsonl, TensorBoard event files, a plot
"""
