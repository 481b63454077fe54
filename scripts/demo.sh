#!/usr/bin/env bash
# The README's main job: set up .venv, install pqm-jax[demo], then personalise NF4 Whisper tiny.en
# for synthetic espeak-ng speakers end to end (quantise -> speaker-independent LoRA -> per-speaker
# LoRA -> evaluation table). Extra arguments go to train.py as config overrides.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup_env.sh demo
workdir="${PQM_WORKDIR:-$root/runs/demo}"
python train.py --config configs/demo.py --workdir "$workdir" "$@"
python evaluate.py --workdir "$workdir"
