#!/usr/bin/env bash
# The test suite, in the project's environment (created on first use). Extra arguments go to pytest.
#   bash scripts/run_tests.sh           everything (CI, .ci/run), then the 15 slowest tests
#   bash scripts/run_tests.sh --quick   the quick tier: tests not marked slow (~3 min on 2 cores)
# The tiers (pytest markers slow, e2e, ddp, golden, cuda) are registered in pytest.ini.
# Tests run in VIPMT_TEST_WORKERS processes (pytest-xdist; default: one per core, at most 2), each
# module on one worker (tests/conftest.py). At most 2: a worker's peak is ~10 GB resident (the golden
# gradients), and the golden modules, ~5 minutes on one worker, bound the wall time anyway.
# VIPMT_TEST_WORKERS=1 runs everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
cores=$(.venv/bin/python -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)")
workers=${VIPMT_TEST_WORKERS:-$(( cores < 2 ? cores : 2 ))}
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadscope --no-loadscope-reorder)
fi
if [ "${1:-}" = "--quick" ]; then
  shift
  exec .venv/bin/python -m pytest -q -m "not slow" --durations=5 ${parallel[@]+"${parallel[@]}"} "$@" tests
fi
exec .venv/bin/python -m pytest -q --durations=15 ${parallel[@]+"${parallel[@]}"} "$@" tests
