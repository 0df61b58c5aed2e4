#!/usr/bin/env bash
# GPU readiness in one command: golden cases on CUDA, engine fp32/bf16 speed, frames/s with K = 1, 4, 16
# videos per forward pass (test_video_batch) in fp32/bf16, fp16 AMP training
# steps, kill + resume of train.py, DDP over NCCL. Report in outputs/gpu_check/ (report.md, report.json).
# Extra arguments go to benchmarks/gpu_check.py (e.g. --device cuda:1, --out DIR, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m benchmarks.gpu_check "$@"
