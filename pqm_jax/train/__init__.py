"""PQM training: speaker-independent LoRA (stage 2) and vmapped per-speaker adaptation (stage 3);
for the Conformer, training the backbone from scratch first (pretrain).

Modules (import the one you need):
  config     typed run configuration built from `configs/*.py` (ConfigError names bad keys)
  optim      optax moments + clipping; per-step learning rates that work under vmap
  steps      teacher-forced loss, token accuracy, audio window, the jitted stage-2 step
  conformer_steps  the Conformer's joint CTC/attention loss in the same batch layout
  pretrain   training a Conformer from scratch; its model folder (model.json, tokens.txt)
  adapt      the vmapped bank program: chunks, per-speaker schedules, early stopping, best
  examples   Examples arrays and the deterministic (resumable) batch order
  featurize  cached log-mel features, token ids with loss weights
  corpus     which utterances: target speakers' splits and the stage-2 pool
  stages     checkpointed training loop (pretrain, stage 2) and the stage-3 driver
  pipeline   [pretrain ->] quantise -> stage 2 -> stage 3 (`run_pipeline`), work-folder layout
  results    reading a run back: base, adapters, one speaker, the bank, splits, features
  metrics    metrics.jsonl, TensorBoard event files, a plot
  toy        tiny random models and batches for tests and benchmarks
"""
