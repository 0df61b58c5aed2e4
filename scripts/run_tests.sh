#!/usr/bin/env bash
# The test suite, in the project's environment (created on first use). Extra arguments go to pytest.
#   bash scripts/run_tests.sh           everything (CI, .ci/run), then the 15 slowest tests
#   bash scripts/run_tests.sh --quick   the quick tier: tests not marked slow (under a minute on 2 cores)
# The tiers (pytest markers slow, e2e, ddp, golden, cuda) are registered in pytest.ini.
# Tests run in pytest-xdist workers, one per core and at most 2 (VIPMT_TEST_WORKERS=0: all in this process),
# each module on one worker (tests/conftest.py). At most 2: a worker's peak is ~10 GB resident (the golden
# gradients), and the golden modules, ~5 minutes on one worker, bound the wall time anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
parallel=(-n "${VIPMT_TEST_WORKERS:-auto}" --maxprocesses 2 --dist loadscope --no-loadscope-reorder)
if [ "${1:-}" = "--quick" ]; then
  shift
  exec .venv/bin/python -m pytest -q -m "not slow" --durations=5 "${parallel[@]}" "$@" tests
fi
exec .venv/bin/python -m pytest -q --durations=15 "${parallel[@]}" "$@" tests
