#!/usr/bin/env bash
# Creates (or reuses) .venv and installs pqm-jax with the given extras. Sourced by test.sh/demo.sh.
# Usage: source scripts/setup_env.sh EXTRAS   (e.g. "test" or "demo")
set -euo pipefail
extras="${1:-demo}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PQM_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e "$root[$extras]"
# Whisper's English spelling map (normalizers/english.json) ships only in openai-whisper's source
# package; install it without its heavy dependencies (we use only that data file).
python -m pip install -q --no-deps "openai-whisper==20250625"
# XLA on CPU allocates fresh output and working buffers for every call; with glibc's default
# malloc each large one is a new mmap, paid again in 4 KiB page faults (measured: a 64 MiB
# elementwise op 26 ms with it, 7.6 ms with transparent huge pages). Ask glibc (>= 2.35) to back
# its allocations with huge pages; older ones ignore the setting. PQM_HUGEPAGES=0 turns it off.
if [ "${PQM_HUGEPAGES:-1}" != "0" ] && [[ "${GLIBC_TUNABLES:-}" != *hugetlb* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
