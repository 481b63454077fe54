#!/usr/bin/env bash
# The README's test command: set up .venv, install pqm-jax[test], run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not slow"). Fails when pytest collects no test.
# Tests run in PQM_TEST_WORKERS processes (default 2, pytest-xdist; 0 = this process), one test
# file per worker at a time (a file's module fixtures are built once): most of a test's time is
# single-threaded compilation and Python, so a second worker uses the second core (CI: 2 cores).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup_env.sh test
if [ -z "${PQM_SHARED_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
  export PQM_SHARED_DATA="$root/../shared/data"
fi
set +e
workers="${PQM_TEST_WORKERS:-2}"
python -m pytest -n "$workers" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
