"""benchmarks/gpu_check.py end to end: the quick CPU mode writes both reports with every section,
and on a CUDA machine the full check passes (marker `cuda`, skipped without a GPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts_support import REPO
from test_model_golden import LOGITS_TOL, SCORE_TOL

SECTIONS = ["golden cases (float32)", "engine speed (fp32, bf16)", "videos per pass (K)", "fp16 AMP training steps",
            "kill + resume (train.py)", "DDP (torchrun)", "train epoch at 1280x720 (loader)"]


def run_check(out, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return proc, report


def test_quick_cpu_check_writes_every_section(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == SECTIONS
    assert [s["status"] for s in sections.values()] == ["pass", "pass", "pass", "pass", "pass", "skipped", "pass"]
    assert report["quick"] and report["environment"]["device"] == "cpu"

    case = sections["golden cases (float32)"]["details"]["cases"]["test_golden_case[eval_b1_q5_s5]"]
    assert case["outcome"] == "passed"
    assert 0 <= case["logits_max_abs_diff"] <= LOGITS_TOL and 0 <= case["score_max_abs_diff"] <= SCORE_TOL
    engine = sections["engine speed (fp32, bf16)"]["details"]
    assert engine["fp32_frames_per_s"] > 0 and engine["bf16_frames_per_s"] > 0
    assert 0 <= engine["bf16_pixels_differing"] <= 0.01
    batched = sections["videos per pass (K)"]["details"]
    assert set(batched["rows"]) == {"fp32 K=1", "fp32 K=2", "bf16 K=1", "bf16 K=2"}
    assert all(row["frames"] == 6 and row["frames_per_s"] > 0 for row in batched["rows"].values())
    assert batched["rows"]["fp32 K=2"]["vs_K1"]["pixels_differing"] == 0.0      # same masks, one video or two
    training = sections["fp16 AMP training steps"]["details"]
    assert training["losses_finite"] and len(training["losses"]) == training["steps"] == 2
    resume = sections["kill + resume (train.py)"]["details"]
    assert resume["killed_process_exit"] == -9 and resume["resume_exit"] == 0
    assert resume["checkpoint_step_after_resume"] == resume["checkpoint_step_at_kill"] + 2 >= 3
    assert "needs" not in sections["DDP (torchrun)"]["note"] and "--quick" in sections["DDP (torchrun)"]["note"]
    epoch = sections["train epoch at 1280x720 (loader)"]["details"]["default"]
    assert epoch["steps_per_s"] > 0 and epoch["data_time_s"] > 0 and 0 < epoch["data_wait_fraction"] < 1

    text = (tmp_path / "report.md").read_text()
    assert "| section | status | seconds | numbers |" in text
    for name, section in sections.items():
        assert f"## {name}: {section['status']}" in text
    assert text in proc.stdout                                          # also printed


def test_cuda_without_a_gpu_is_a_user_error(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc, report = run_check(tmp_path, "--device", "cuda", timeout=120)
    assert proc.returncode == 2 and report is None
    assert proc.stderr.startswith("error: ") and "CUDA is not available" in proc.stderr


@pytest.mark.cuda
def test_full_check_passes_on_cuda(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cuda", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = {s["name"]: s["status"] for s in report["sections"]}
    assert all(status == "pass" for name, status in statuses.items() if name != "DDP (torchrun)")
    assert statuses["DDP (torchrun)"] in ("pass", "skipped")
