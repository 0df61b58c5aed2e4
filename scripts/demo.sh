#!/usr/bin/env bash
# One command on a fresh machine: set up .venv, then run the main job on a synthetic dataset
# (train on CPU, test, print metrics, write overlays). Extra arguments go to demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python demo.py "$@"
