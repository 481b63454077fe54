"""The jittable training core: pure functions of (adapters, base, batch); no files, no run folder.

Modules (import the one you need):
  steps      teacher-forced loss by the model's family, token accuracy, the jitted stage-2 step
  optim      optax moments + clipping; per-step learning rates that work under vmap
  adapt      the vmapped bank program: chunks, per-speaker schedules, early stopping, best
  examples   Examples arrays and the deterministic (resumable) batch order
"""
