"""train.py under torchrun with 2 CPU processes (gloo): one DDP step and a checkpoint."""
import math
import os
import subprocess
import sys

import torch

from scripts_support import REPO, TINY, write_dataset


def test_torchrun_two_processes_gloo(tmp_path):
    data = write_dataset(str(tmp_path / "ytvis"))             # 3 training classes -> 1 batch per rank
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "train.py"), "--data-root", data, "--device", "cpu", "--backbone-weights", "none",
           "--output-dir", str(tmp_path / "runs"), "--run-name", "ddp"] + TINY
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "runs/ddp/last.pth", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2      # both ranks' RNG states saved
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 1        # one step per rank, one epoch
    record = ckpt["metrics"]["history"][0]
    assert all(math.isfinite(record[k]) for k in ("train_loss", "train_main", "train_aux", "train_score"))
    assert 0.0 <= record["val_mean_class_iou"] <= 1.0
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])   # saved unwrapped
