"""benchmarks/gpu_check.py: a smoke of every section at tiny sizes, in this process (the sections that
start pytest or train.py get stand-ins for those processes: the golden cases and train.py's kill,
resume and epoch are tested where they live), the report it writes, and the CUDA checks (marker
`cuda`, skipped without a GPU). The whole check end to end on CPU is a measurement, not a test:
`python -m benchmarks.gpu_check --device cpu --quick --out /tmp/gpu_check` (docs/speed.md)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from scripts_support import REPO

SECTIONS = ["golden cases (float32)", "engine speed (fp32, bf16)", "videos per pass (K)", "fp16 AMP training steps",
            "kill + resume (train.py)", "DDP (torchrun)", "train epoch at 1280x720 (loader)"]
GOLDEN_CASE = "eval_b1_q5_s5"
# --quick's sizes made smaller still: 2-frame videos at 64x64, one training step of one episode
SMOKE = dataclasses.replace(gpu_check.QUICK, engine_frames=2, engine_size=(64, 64), batch_frames=2, amp_steps=1,
                            amp_batch=1)


def run_check(out, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return proc, report


def _option(cmd: list, name: str) -> str:
    cmd = [str(c) for c in cmd]
    return cmd[cmd.index(name) + 1]


def _write_checkpoint(run_dir: Path, step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "world_size": 1}, run_dir / "last.pth")


def golden_test_module(folder: Path) -> Path:
    """A stand-in for tests/test_model_golden.py: the quick case, recording the properties the real one does."""
    path = folder / "test_golden_standin.py"
    path.write_text("import pytest\n\n"
                    f"@pytest.mark.parametrize('case', ['{GOLDEN_CASE}', 'eval_b2_q5_s5'])\n"
                    "def test_golden_case(case, record_property):\n"
                    "    for name, value in (('init_logits_max_abs_diff', 3e-6), ('logits_max_abs_diff', 4e-6),\n"
                    "                        ('pred_mismatch_fraction', 0.0), ('minority_iou', 1.0),\n"
                    "                        ('score_max_abs_diff', 2e-7)):\n"
                    "        record_property(name, value)\n")
    return path


def stand_in_popen(monkeypatch) -> None:
    """gpu_check's `subprocess.Popen` (only there) starts a KilledTrainPy."""
    module = types.ModuleType("subprocess")
    module.__dict__.update(vars(subprocess))
    module.Popen = KilledTrainPy
    monkeypatch.setattr(gpu_check, "subprocess", module)


class KilledTrainPy:
    """train.py as `subprocess.Popen` starts it in the kill + resume section: it has written last.pth
    after step 1 and runs on until it is killed."""

    def __init__(self, cmd, **kwargs):
        _write_checkpoint(Path(_option(cmd, "--output-dir")) / _option(cmd, "--run-name"), 1)
        self.returncode = None

    def poll(self):
        return self.returncode

    def send_signal(self, sig):
        self.returncode = -sig

    def wait(self, timeout=None):
        return self.returncode


def stand_in_processes(golden_module: Path):
    """`gpu_check._run`: pytest runs `golden_module` for tests/test_model_golden.py (a real pytest and
    its real junit report); train.py writes what the sections read (last.pth, train.log, metrics.jsonl)."""
    def run(cmd, cwd=REPO, env=None, timeout=gpu_check.SUBPROCESS_TIMEOUT):
        cmd = [str(c) for c in cmd]
        if "pytest" in cmd:
            cmd = [str(golden_module) if c == "tests/test_model_golden.py" else c for c in cmd]
            return subprocess.run(cmd, cwd=str(golden_module.parent), capture_output=True, text=True, timeout=timeout)
        assert "train.py" in cmd, cmd
        run_dir = Path(_option(cmd, "--output-dir")) / _option(cmd, "--run-name")
        if "--resume" in cmd:
            _write_checkpoint(run_dir, int(_option(cmd, "--stop-after")))
            (run_dir / "train.log").write_text("resumed after epoch 0 + 1 iterations\n")
        else:
            run_dir.mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"global_step": 3, "data_time": 0.25,
                                                               "data_wait_fraction": 0.1}) + "\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


@pytest.mark.slow
def test_every_section_at_tiny_sizes_writes_both_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "QUICK", SMOKE)
    monkeypatch.setattr(gpu_check, "_run", stand_in_processes(golden_test_module(tmp_path)))
    stand_in_popen(monkeypatch)
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == SECTIONS
    assert [s["status"] for s in sections.values()] == ["pass", "pass", "pass", "pass", "pass", "skipped", "pass"]
    assert report["quick"] and report["environment"]["device"] == "cpu"

    golden = sections["golden cases (float32)"]
    case = golden["details"]["cases"][f"test_golden_case[{GOLDEN_CASE}]"]
    assert case["outcome"] == "passed" and case["logits_max_abs_diff"] == 4e-6 and case["score_max_abs_diff"] == 2e-7
    assert list(golden["details"]["cases"]) == [f"test_golden_case[{GOLDEN_CASE}]"]      # -k: the quick case only
    assert golden["summary"] == "1/1 cases passed; worst logits diff 4.0e-06"
    engine = sections["engine speed (fp32, bf16)"]["details"]
    assert engine["fp32_frames_per_s"] > 0 and engine["bf16_frames_per_s"] > 0
    assert 0 <= engine["bf16_pixels_differing"] <= 0.01
    batched = sections["videos per pass (K)"]["details"]
    assert set(batched["rows"]) == {"fp32 K=1", "fp32 K=2", "bf16 K=1", "bf16 K=2"}
    assert all(row["frames"] == 4 and row["frames_per_s"] > 0 for row in batched["rows"].values())
    assert batched["rows"]["fp32 K=2"]["vs_K1"]["pixels_differing"] == 0.0      # same masks, one video or two
    training = sections["fp16 AMP training steps"]["details"]
    assert training["losses_finite"] and len(training["losses"]) == training["steps"] == 1
    resume = sections["kill + resume (train.py)"]["details"]
    assert resume["killed_process_exit"] == -signal.SIGKILL and resume["resume_exit"] == 0
    assert resume["checkpoint_step_after_resume"] == resume["checkpoint_step_at_kill"] + 2 == 3
    assert resume["log_says_resumed"]
    assert "needs" not in sections["DDP (torchrun)"]["note"] and "--quick" in sections["DDP (torchrun)"]["note"]
    epoch = sections["train epoch at 1280x720 (loader)"]["details"]["default"]
    assert epoch == {"steps": 3, "steps_per_s": 0.4, "data_time_s": 0.25, "data_wait_fraction": 0.1,
                     "wall_seconds_with_startup_and_validation": epoch["wall_seconds_with_startup_and_validation"]}

    text = (tmp_path / "out" / "report.md").read_text()
    assert "| section | status | seconds | numbers |" in text
    for name, section in sections.items():
        assert f"## {name}: {section['status']}" in text
    assert text in capsys.readouterr().out                              # also printed


def test_a_failing_golden_case_or_resume_fails_its_section_and_the_check(tmp_path, monkeypatch):
    """A golden case off by more than its tolerance, and a resume that does not reach its step:
    both sections say fail, the other sections still run, and the exit status is 1."""
    golden = golden_test_module(tmp_path)
    golden.write_text(golden.read_text() + "    assert False, 'logits off by 1e-2'\n")
    run = stand_in_processes(golden)

    def resume_stops_early(cmd, **kwargs):
        if "--resume" in [str(c) for c in cmd]:
            cmd = [str(c) for c in cmd]
            cmd[cmd.index("--stop-after") + 1] = "2"
        return run(cmd, **kwargs)

    monkeypatch.setattr(gpu_check, "_run", resume_stops_early)
    stand_in_popen(monkeypatch)
    for name in ("check_engine", "check_video_batch", "check_amp_training"):     # passing sections, not rerun here
        monkeypatch.setattr(gpu_check, name, lambda *args, name=name: gpu_check.Section(name, gpu_check.PASS))
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "out")]) == 1
    sections = {s["name"]: s for s in json.loads((tmp_path / "out" / "report.json").read_text())["sections"]}
    golden_section = sections["golden cases (float32)"]
    assert golden_section["status"] == "fail" and golden_section["summary"].startswith("0/1 cases passed")
    case = golden_section["details"]["cases"][f"test_golden_case[{GOLDEN_CASE}]"]
    assert case["outcome"] == "failed" and "logits off by 1e-2" in case["message"]
    resume = sections["kill + resume (train.py)"]
    assert resume["status"] == "fail" and resume["summary"] == "killed at step 1, resumed to step 2 (expected 3)"
    assert sections["train epoch at 1280x720 (loader)"]["status"] == "pass"


def test_the_quick_golden_case_is_one_of_the_golden_cases():
    """--quick selects one case of tests/test_model_golden.py by -k (the smoke above runs a stand-in)."""
    from helpers import reference_case

    assert [c for c in reference_case.golden_cases() if gpu_check.QUICK.golden_cases in c] == [GOLDEN_CASE]


@pytest.mark.slow
@pytest.mark.e2e
def test_cuda_without_a_gpu_is_a_user_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc, report = run_check(tmp_path, "--device", "cuda", timeout=120)
    assert proc.returncode == 2 and report is None
    assert proc.stderr.startswith("error: ") and "CUDA is not available" in proc.stderr


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.e2e
def test_full_check_passes_on_cuda(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cuda", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = {s["name"]: s["status"] for s in report["sections"]}
    assert all(status == "pass" for name, status in statuses.items() if name != "DDP (torchrun)")
    assert statuses["DDP (torchrun)"] in ("pass", "skipped")
