#!/usr/bin/env bash
# The test suite, in the project's environment (created on first use). Extra arguments go to pytest.
#   bash scripts/run_tests.sh           everything (CI, .ci/run), then the 15 slowest tests
#   bash scripts/run_tests.sh --quick   the quick tier: tests not marked slow (~3 min on 2 cores)
# The tiers (pytest markers slow, e2e, ddp, golden, cuda) are registered in pytest.ini.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ "${1:-}" = "--quick" ]; then
  shift
  exec .venv/bin/python -m pytest -q -m "not slow" --durations=5 "$@" tests
fi
exec .venv/bin/python -m pytest -q --durations=15 "$@" tests
