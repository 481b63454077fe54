"""PQM training: speaker-independent LoRA (stage 2) and vmapped per-speaker adaptation (stage 3).

Modules (import the one you need):
  config     typed run configuration built from `configs/*.py` (ConfigError names bad keys)
  optim      optax moments + clipping; per-step learning rates that work under vmap
  steps      teacher-forced loss, token accuracy, audio window, the jitted stage-2 step
  adapt      the vmapped bank program: chunks, per-speaker schedules, early stopping, best
  examples   Examples arrays and the deterministic (resumable) batch order
  featurize  cached log-mel features, token ids with loss weights
  corpus     which utterances: target speakers' splits and the stage-2 pool
  stages     checkpointed stage-2 / stage-3 drivers
  pipeline   quantise -> stage 2 -> stage 3 (`run_pipeline`), work-folder layout
  results    reading a run back: base, adapters, one speaker, the bank, splits, features
  metrics    metrics.jsonl, TensorBoard event files, a plot
  toy        tiny random models and batches for tests and benchmarks
"""
