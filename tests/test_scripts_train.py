"""train.py: one training step, interrupt + resume, the NaN guard (tiny synthetic data, CPU)."""
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import reference_case
from scripts_support import REPO, TINY, load_script, run, write_dataset

train = load_script("train")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


def tiny_config(data, out_dir, *overrides):
    from config import apply_overrides, get_config, update_config

    cfg = update_config(get_config(), {"youtube_vis_root": data, "device": "cpu", "backbone_weights": "none",
                                       "output_dir": str(out_dir)})
    return apply_overrides(cfg, TINY + list(overrides))


def test_one_training_step_changes_the_weights_with_finite_losses(data, tmp_path):
    from utils.distributed import DistInfo
    from vipmt.build import collate_episodes
    from vipmt.training import Trainer

    cfg = tiny_config(data, tmp_path, "batch_size=2")
    trainer = Trainer(cfg, dist_info=DistInfo(), device=torch.device("cpu"), run_dir=str(tmp_path))
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in trainer.model.backbone.named_parameters()}
    assert trainable and frozen
    trainer.begin_epoch()
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_sampler=trainer.sampler,
                                                  collate_fn=collate_episodes)))
    assert len(set(batch["class_id"])) == 2                  # the batch holds different classes
    losses = trainer.train_step(batch)
    assert set(losses) == {"loss", "main", "aux", "contrast", "score"}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["contrast"] > 0                            # two episodes: cross-video maps exist
    assert losses["loss"] == pytest.approx(sum(losses[k] for k in ("main", "aux", "contrast", "score")), rel=1e-5)
    params = dict(trainer.model.named_parameters())
    changed = [n for n, before in trainable.items() if not torch.equal(params[n].detach(), before)]
    assert len(changed) > 0.9 * len(trainable)               # Adam moves (nearly) every trainable weight
    assert {"upsample1.weight", "upsample2.weight"} <= set(changed)
    # the optimiser trains exactly the authors' parameters, in their order
    names = {id(p): n for n, p in params.items()}
    optimised = [names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]]
    grads_case = reference_case.grads_cases()[0]
    assert optimised == [str(n) for n in np.load(f"{reference_case.GOLDEN_DIR}/{grads_case}.npz")["names"]]
    assert all(torch.equal(p.detach(), frozen[n]) for n, p in trainer.model.backbone.named_parameters())


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _kill_after_first_checkpoint(argv, checkpoint, timeout=300):
    """Start train.py in a subprocess and SIGKILL it as soon as `checkpoint` exists."""
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py")] + [str(a) for a in argv],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert os.path.exists(checkpoint), "the run was killed before it wrote a checkpoint"


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    # one training class (2 episodes -> 2 iterations per epoch), 2 epochs = 4 steps; last.pth
    # is refreshed after every iteration
    one_class = write_dataset(str(tmp_path / "one_class"), num_categories=2)
    common = ["--data-root", one_class, "--device", "cpu", "--backbone-weights", "none",
              "--output-dir", tmp_path / "runs"] + TINY + ["epochs=2", "episodes_per_class=2",
                                                            "checkpoint_every_iters=1"]
    assert run(train, common + ["--run-name", "straight"]) == 0
    # kill -9 once the first checkpoint exists, resume and stop at the end of epoch 1 (or one
    # step later if the killed run got further), resume and stop one step later, then finish
    pieces = common + ["--run-name", "pieces"]
    _kill_after_first_checkpoint(pieces, tmp_path / "runs/pieces/last.pth")
    assert _load(tmp_path / "runs/pieces/last.pth")["global_step"] >= 1
    assert run(train, pieces + ["--resume", "--stop-after", "2"]) == 0
    assert run(train, pieces + ["--resume", "--stop-after", "3"]) == 0
    assert _load(tmp_path / "runs/pieces/last.pth")["global_step"] == 3
    assert run(train, pieces + ["--resume"]) == 0

    a, b = _load(tmp_path / "runs/straight/last.pth"), _load(tmp_path / "runs/pieces/last.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])
    assert a["metrics"]["history"] == b["metrics"]["history"]   # same losses and validation IoU
    assert {k: v for k, v in a["config"].items() if k != "run_name"} == \
        {k: v for k, v in b["config"].items() if k != "run_name"}
    # the run directory is complete and self-describing
    run_dir = tmp_path / "runs/pieces"
    for name in ("config.yaml", "train.log", "last.pth", "best.pth", "tb"):
        assert (run_dir / name).exists(), name
    assert b["config"]["image_size"] == [64, 64] and b["config"]["epochs"] == 2
    log = (run_dir / "train.log").read_text()
    assert "resumed after epoch" in log and "RANDOM backbone" in log   # --backbone-weights none warns
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]          # no temporary files left behind


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    from models.vipmt import VIPMT

    common = ["--data-root", data, "--device", "cpu", "--backbone-weights", "none",
              "--output-dir", tmp_path, "--run-name", "nan"] + TINY + ["checkpoint_every_iters=1"]
    original = VIPMT.losses
    calls = {"n": 0}

    def losses_nan_in_step_2(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 3:                                   # 3 clips per step: step 2 goes bad
            terms["main_loss"] = terms["main_loss"] * float("nan")
        return terms

    monkeypatch.setattr(VIPMT, "losses", losses_nan_in_step_2)
    assert run(train, common) == 1
    err = capsys.readouterr().err
    assert "error: non-finite loss" in err and "iteration 2" in err and "last.pth" in err
    kept = _load(tmp_path / "nan/last.pth")
    assert (kept["epoch"], kept["iteration"]) == (0, 1)      # the checkpoint of step 1 is intact
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
