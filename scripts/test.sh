#!/usr/bin/env bash
# The README's test command: set up .venv, install pqm-jax[test], run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not slow"). Fails when pytest collects no test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup_env.sh test
if [ -z "${PQM_SHARED_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
  export PQM_SHARED_DATA="$root/../shared/data"
fi
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
