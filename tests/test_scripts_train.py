"""train.py on tiny synthetic data (CPU).

With the real network: one training step, and a run stopped and resumed twice that ends where an
uninterrupted one does. Around the loop, with the stand-in network (tests/standin.py: the loop,
hooks and checkpoints do not depend on what the network computes): kill -9 / Ctrl-C + resume, the
run lock, resume with changed values, periodic and metrics files, AMP's skipped steps and the NaN
guard.
"""
import contextlib
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
import yaml

from helpers import reference_case
from scripts_support import (REPO, TIMING_KEYS, TINY, assert_same_run, load_script, metrics_lines, run, tiny,
                             with_overrides, without_timings, write_dataset)
from standin import use_standin

train = load_script("train")


STANDIN_TRAIN = os.path.join(REPO, "tests", "standin_train.py")    # train.py with the stand-in network
SLOW_CLIP_SECONDS = "0.5"      # the stand-in's clips in a train.py that gets signals: a step takes 1.5 s


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


@pytest.fixture
def standin(monkeypatch):
    """train.py in this process trains the stand-in network."""
    use_standin(monkeypatch)


def tiny_config(data, out_dir, *overrides):
    from config import apply_overrides, get_config, update_config

    cfg = update_config(get_config(), {"youtube_vis_root": data, "device": "cpu", "backbone_weights": "none",
                                       "output_dir": str(out_dir)})
    return apply_overrides(cfg, TINY + list(overrides))


@pytest.mark.slow
def test_one_training_step_changes_the_weights_with_finite_losses(data, tmp_path):
    from utils.distributed import DistInfo
    from vipmt.build import build_training_data, build_training_parts, collate_episodes
    from vipmt.training import Trainer

    cfg = tiny_config(data, tmp_path, "batch_size=2")
    cpu = torch.device("cpu")
    trainer = Trainer(cfg, device=cpu, parts=build_training_parts(cfg, DistInfo(), cpu, backbone_weights=None),
                      data=build_training_data(cfg, DistInfo(), cpu), hooks=[])
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


def _start_train(argv, stderr_path, clip_seconds="0"):
    """train.py with the stand-in network in a subprocess (its stderr to a file); each clip's forward
    takes ``clip_seconds``."""
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen([sys.executable, STANDIN_TRAIN] + [str(a) for a in argv], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env=dict(os.environ, STANDIN_SECONDS_PER_CLIP=clip_seconds))


def _wait_for(proc, path, stderr_path, timeout=600):
    """Wait until `path` exists while `proc` runs; fail (showing its stderr) if it ended first."""
    deadline = time.time() + timeout
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if not os.path.exists(path):
        proc.kill()
        proc.wait()
        pytest.fail(f"train.py ended or timed out before writing {path}:\n" + open(stderr_path).read()[-3000:])


@contextlib.contextmanager
def _training_until(argv, path, stderr_path, clip_seconds="0"):
    """train.py (stand-in network) in a subprocess, yielded once `path` exists; killed (if still running)
    on leaving."""
    proc = _start_train(argv, stderr_path, clip_seconds)
    try:
        _wait_for(proc, path, stderr_path)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _kill_after_first_checkpoint(argv, checkpoint, stderr_path):
    """Start train.py (stand-in network, slowed down) in a subprocess and SIGKILL it as soon as
    `checkpoint` exists."""
    with _training_until(argv, checkpoint, stderr_path, SLOW_CLIP_SECONDS):
        pass


def _one_class_run(root, *overrides):
    """(the arguments of a run on one training class (2 episodes -> 2 iterations per epoch), 2 epochs =
    4 steps, last.pth after every iteration, in ``root/runs``, with ``key=value`` overrides; the run
    directory of --run-name straight)."""
    one_class = write_dataset(str(root / "one_class"), num_categories=2)
    common = ["--data-root", one_class, "--device", "cpu", "--backbone-weights", "none", "--output-dir", root / "runs"]
    common += with_overrides(tiny("epochs=2", "episodes_per_class=2", "checkpoint_every_iters=1"), *overrides)
    return common, root / "runs" / "straight"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of the stand-in network to compare interrupted ones with (_one_class_run,
    epoch_NNN.pth after every epoch). Returns (the arguments common to the runs, the run directory)."""
    common, run_dir = _one_class_run(tmp_path_factory.mktemp("straight"), "save_every=1")
    with pytest.MonkeyPatch.context() as patch:
        use_standin(patch)
        assert run(train, common + ["--run-name", "straight"]) == 0
    return common, run_dir


@pytest.mark.slow
def test_the_real_network_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path):
    """The network's own random streams (dropout), memory draws and Adam state continue bit-identically
    across a resume inside an epoch (the loop around it, epoch ends included: the stand-in tests below
    and tests/test_training_loop.py)."""
    common, straight_dir = _one_class_run(tmp_path, "epochs=1")
    assert run(train, common + ["--run-name", "straight"]) == 0
    pieces = common + ["--run-name", "pieces"]
    assert run(train, pieces + ["--stop-after", "1"]) == 0
    assert run(train, pieces + ["--resume"]) == 0
    a, b = _load(straight_dir / "last.pth"), _load(straight_dir.parent / "pieces" / "last.pth")
    assert a["epoch"] == 1 and a["global_step"] == 2 and len(a["state_dict"]) > 300    # the real network
    assert_same_run(a, b)
    assert without_timings(metrics_lines(straight_dir.parent / "pieces")) == without_timings(metrics_lines(straight_dir))


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(straight, tmp_path, standin):
    common, straight_dir = straight
    # kill -9 once the first checkpoint exists, resume and stop at the end of epoch 1 (or one
    # step later if the killed run got further), resume and stop one step later, then finish
    pieces = common + ["--run-name", "pieces"]
    run_dir = straight_dir.parent / "pieces"
    _kill_after_first_checkpoint(pieces, run_dir / "last.pth", tmp_path / "stderr.txt")
    assert _load(run_dir / "last.pth")["global_step"] >= 1
    assert run(train, pieces + ["--resume", "--stop-after", "2"]) == 0
    assert run(train, pieces + ["--resume", "--stop-after", "3"]) == 0
    assert _load(run_dir / "last.pth")["global_step"] == 3
    assert run(train, pieces + ["--resume"]) == 0

    a, b = _load(straight_dir / "last.pth"), _load(run_dir / "last.pth")
    assert a["epoch"] == 2 and a["global_step"] == 4
    assert_same_run(a, b)
    # the run directory is complete and self-describing
    for name in ("config.yaml", "train.log", "last.pth", "best.pth", "tb", "metrics.jsonl"):
        assert (run_dir / name).exists(), name
    assert b["config"]["image_size"] == [64, 64] and b["config"]["epochs"] == 2
    log = (run_dir / "train.log").read_text()
    assert "resumed after epoch" in log and "RANDOM backbone" in log   # --backbone-weights none warns
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]          # no temporary files left behind
    # metrics.jsonl: one line per epoch after three resumes, as in the uninterrupted run
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [1, 2]
    assert without_timings(lines) == without_timings(metrics_lines(straight_dir))
    assert set(lines[1]) >= {"train_loss", "train_main", "train_aux", "train_contrast", "train_score",
                             "val_mean_class_iou", "val_class_iou", "global_step", "lr", *TIMING_KEYS}
    # the wait for data (detectron2's data_time): mean seconds per step, and its share of the steps' time
    for line in lines:
        assert line["data_time"] > 0 and 0 < line["data_wait_fraction"] < 1
    assert lines[1]["global_step"] == 4 and list(lines[1]["val_class_iou"]) == ["1"]   # the held-out class
    assert lines[1]["val_mean_class_iou"] == pytest.approx(lines[1]["val_class_iou"]["1"])
    assert [r["val_mean_class_iou"] for r in b["metrics"]["history"]] == [r["val_mean_class_iou"] for r in lines]


@pytest.mark.slow
@pytest.mark.e2e
def test_data_wait_is_in_train_log_and_warned_about_once(straight):
    _common, run_dir = straight
    lines, log = metrics_lines(run_dir), (run_dir / "train.log").read_text()
    for line in lines:     # each epoch's line: "(N s, data 0.012 s/step (3 % waiting))"
        assert f"data {line['data_time']:.3f} s/step ({100 * line['data_wait_fraction']:.0f} % waiting)" in log
    slow = [line["epoch"] for line in lines if line["data_wait_fraction"] > 0.2]
    assert log.count("the model waited for data") == (1 if slow else 0)
    if slow:
        assert f"epoch {slow[0]}: the model waited for data" in log and "num_workers" in log


@pytest.mark.slow
@pytest.mark.e2e
def test_periodic_checkpoints_hold_the_weights_only(straight):
    from utils.checkpoint import is_resumable

    _common, run_dir = straight
    last, best, periodic = (_load(run_dir / name) for name in ("last.pth", "best.pth", "epoch_002.pth"))
    assert is_resumable(last) and is_resumable(best) and not is_resumable(periodic)
    assert periodic["contents"] == "weights" and "optimizer" not in periodic and "rng" not in periodic
    assert periodic["epoch"] == 2 and periodic["config"] == last["config"]
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in periodic["state_dict"].items())
    assert os.path.getsize(run_dir / "epoch_002.pth") < 0.5 * os.path.getsize(run_dir / "last.pth")
    assert _load(run_dir / "epoch_001.pth")["epoch"] == 1


@pytest.mark.slow
def test_ctrl_c_saves_last_pth_exits_75_and_resume_continues_exactly(straight, tmp_path, capsys, standin):
    common, straight_dir = straight
    argv = common + ["--run-name", "ctrl_c"]
    run_dir = straight_dir.parent / "ctrl_c"
    stderr_path = tmp_path / "stderr.txt"
    with _training_until(argv, run_dir / "last.pth", stderr_path, SLOW_CLIP_SECONDS) as proc:
        # while it runs, a second train.py on the same run directory is refused, naming the first
        assert run(train, argv + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another process" in err and f"pid {proc.pid} on host {socket.gethostname()}" in err
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=600) == 75                    # EXIT_STOPPED: last.pth saved, run again
    err = stderr_path.read_text()
    assert "Traceback" not in err and "SIGINT: stopping after the current step" in err
    stopped = _load(run_dir / "last.pth")
    assert 1 <= stopped["global_step"] < 4
    log = (run_dir / "train.log").read_text()
    assert f"interrupted at epoch {stopped['epoch'] + 1}, iteration {stopped['iteration']}/2 (SIGINT, " \
           f"step {stopped['global_step']})" in log
    assert run(train, argv + ["--resume"]) == 0
    assert_same_run(_load(straight_dir / "last.pth"), _load(run_dir / "last.pth"))
    assert without_timings(metrics_lines(run_dir)) == without_timings(metrics_lines(straight_dir))


@pytest.mark.slow
@pytest.mark.e2e
def test_second_ctrl_c_exits_at_once_without_saving(straight, tmp_path):
    common, straight_dir = straight
    run_dir = straight_dir.parent / "twice"
    stderr_path = tmp_path / "stderr.txt"
    # last.pth only at epoch ends: the first exists after epoch 1; the signals come inside epoch 2's
    # first step (1.5 s long; a signal before the end of epoch 1's hooks would stop the run at the epoch's end)
    argv = with_overrides(common, "checkpoint_every_iters=0") + ["--run-name", "twice"]
    with _training_until(argv, run_dir / "last.pth", stderr_path, SLOW_CLIP_SECONDS) as proc:
        while "epoch 2/2" not in stderr_path.read_text() and proc.poll() is None:     # epoch 2 has begun
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        while "SIGINT: stopping" not in stderr_path.read_text() and proc.poll() is None:
            time.sleep(0.05)
        # held still, so that its step cannot end, until the second Ctrl-C: 2 s or more after the first (a
        # sooner one is the same Ctrl-C delivered twice, vipmt.signals)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=600) == 130
    err = stderr_path.read_text()
    assert "SIGINT again: exiting at once without saving" in err and "Traceback" not in err
    kept = _load(run_dir / "last.pth")
    assert (kept["epoch"], kept["iteration"]) == (1, 0)       # the step in progress was not saved
    assert "interrupted at epoch" not in (run_dir / "train.log").read_text()


def test_resume_sets_a_new_learning_rate_on_the_optimizer_and_records_it(straight, tmp_path, standin):
    common, straight_dir = straight
    base = _load(straight_dir / "last.pth")                  # after 2 epochs (4 steps) at lr 5e-4
    for name in ("same", "double"):                          # the resumed runs replace (not rewrite) last.pth
        (tmp_path / name).mkdir()
        os.link(straight_dir / "last.pth", tmp_path / name / "last.pth")
    more = with_overrides(common, "epochs=3") + ["--stop-after", "5"]      # one more step, in epoch 3
    assert run(train, more + ["--resume-from", tmp_path / "same/last.pth"]) == 0
    assert run(train, more + ["--resume-from", tmp_path / "double/last.pth", "--lr", "1e-3"]) == 0
    same, double = _load(tmp_path / "same/last.pth"), _load(tmp_path / "double/last.pth")
    assert same["global_step"] == double["global_step"] == 5
    assert {g["lr"] for g in same["optimizer"]["param_groups"]} == {5e-4}
    assert {g["lr"] for g in double["optimizer"]["param_groups"]} == {1e-3}
    # Adam's update is lr times a term that does not depend on lr (same gradients, same moments):
    # twice the rate moves every weight twice as far
    moved_same = torch.cat([(same["state_dict"][k] - v).flatten() for k, v in base["state_dict"].items()
                            if v.is_floating_point()])
    moved_double = torch.cat([(double["state_dict"][k] - v).flatten() for k, v in base["state_dict"].items()
                              if v.is_floating_point()])
    assert moved_same.abs().max() > 1e-5
    # (compared as a whole: each weight's move carries the float32 rounding of weight + step)
    assert (moved_double - 2 * moved_same).norm() <= 1e-3 * (2 * moved_same).norm()    # lr ignored: 0.5
    # what is used is what is shown: config.yaml, the checkpoint's config, train.log, the history
    run_dir = tmp_path / "double"
    assert double["config"]["lr"] == 1e-3 and double["config"]["epochs"] == 3
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["lr"] == 1e-3
    log = (run_dir / "train.log").read_text()
    assert "resuming with changed config values:" in log and "lr 0.0005 -> 0.001 (set on the optimizer)" in log
    change = double["metrics"]["config_changes"][-1]
    assert (change["epoch"], change["iteration"], change["global_step"]) == (2, 0, 4)
    assert change["changes"]["lr"] == [5e-4, 1e-3] and change["changes"]["epochs"] == [2, 3]
    assert change["changes"]["run_name"] == ["straight", "double"]     # --resume-from a copy: its directory
    assert "lr" not in same["metrics"]["config_changes"][-1]["changes"]


@pytest.mark.slow
@pytest.mark.e2e
def test_resume_refuses_to_change_what_defines_the_run(straight, capsys):
    common, straight_dir = straight
    before = {name: (straight_dir / name).read_bytes() for name in ("config.yaml", "train.log", "metrics.jsonl")}
    argv = with_overrides(common, "image_size=96,96", "batch_size=2") + ["--run-name", "straight", "--resume"]
    assert run(train, argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "--resume cannot change image_size (64,64 -> 96,96" in lines[0] and "batch_size (1 -> 2" in lines[0]
    assert all((straight_dir / name).read_bytes() == data for name, data in before.items())   # nothing written


@pytest.fixture
def small_loss_scale(monkeypatch):
    """GradScaler starting at 2**8 instead of 2**16: the first float16 steps of these tiny random-backbone
    runs then do not overflow on their own (at 2**16 step 1 does, and is skipped: the scaler's normal
    settling), so only the injected non-finite losses are skipped."""
    import functools

    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=SMALL_SCALE))


SMALL_SCALE = 256.0


def test_amp_on_cpu_steps_and_the_gradient_scaler_survives_resume(straight, small_loss_scale, standin):
    common, straight_dir = straight
    argv = with_overrides(common, "epochs=1", "amp_on_cpu=true", "periodic_checkpoint_full=true") + ["--run-name", "amp"]
    run_dir = straight_dir.parent / "amp"
    assert run(train, argv + ["--stop-after", "1"]) == 0
    first = _load(run_dir / "last.pth")
    assert first["global_step"] == 1 and first["scaler"] == {"scale": SMALL_SCALE, "growth_factor": 2.0,
                                                             "backoff_factor": 0.5, "growth_interval": 2000,
                                                             "_growth_tracker": 1}
    assert run(train, argv + ["--resume"]) == 0
    final = _load(run_dir / "last.pth")
    # the resumed scaler continued the saved one: a fresh one would count 1 successful step, not 2
    assert final["global_step"] == 2 and final["scaler"]["_growth_tracker"] == 2 and final["amp_skipped_steps"] == 0
    assert "AMP on (torch.float16" in (run_dir / "train.log").read_text()
    record = final["metrics"]["history"][0]
    assert all(math.isfinite(record[f"train_{k}"]) for k in ("loss", "main", "aux", "contrast", "score"))
    changed = [k for k, v in first["state_dict"].items() if not torch.equal(v, final["state_dict"][k])]
    assert changed == list(first["state_dict"])             # the resumed step trained every weight
    # periodic_checkpoint_full=true: epoch_001.pth is the complete last.pth
    assert (run_dir / "epoch_001.pth").read_bytes() == (run_dir / "last.pth").read_bytes()


def test_amp_skips_and_counts_non_finite_steps_and_stops_after_too_many_in_a_row(data, tmp_path, monkeypatch,
                                                                                   capsys, small_loss_scale):
    # 3 training classes x 2 episodes: 6 iterations; steps 2, 4 and 5 go bad, the limit is 2 in a row
    use_standin(monkeypatch, nan_in_steps={2, 4, 5})         # a NaN main loss in these optimizer steps
    argv = ["--data-root", data, "--device", "cpu", "--backbone-weights", "none", "--output-dir", tmp_path,
            "--run-name", "amp_nan"] + tiny("episodes_per_class=2", "checkpoint_every_iters=1", "amp_on_cpu=true",
                                            "amp_max_consecutive_skips=2")
    assert run(train, argv) == 1
    err = capsys.readouterr().err
    assert "error: 2 optimizer steps in a row had inf/nan gradients under AMP" in err and "iteration 5" in err
    log = (tmp_path / "amp_nan/train.log").read_text()
    for iteration in (2, 4, 5):
        assert f"AMP: inf/nan gradients at epoch 1, iteration {iteration} (loss nan)" in log
    kept = _load(tmp_path / "amp_nan/last.pth")                # saved after step 4, the last one before the stop
    assert (kept["global_step"], kept["amp_skipped_steps"], kept["amp_consecutive_skips"]) == (4, 2, 1)
    # the skipped steps left the optimizer alone: Adam stepped twice (steps 1 and 3)
    assert {float(state["step"]) for state in kept["optimizer"]["state"].values()} == {2.0}
    assert kept["scaler"]["scale"] == SMALL_SCALE * 0.5 ** 2    # halved at each skip
    assert all(math.isfinite(v) for v in kept["epoch_running"].values())   # nan losses stay out of the means


@pytest.mark.slow
@pytest.mark.e2e
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    # float32 (no AMP): the first non-finite loss stops the run before it reaches the weights
    use_standin(monkeypatch, nan_in_steps={2, 3})
    common = ["--data-root", data, "--device", "cpu", "--backbone-weights", "none",
              "--output-dir", tmp_path, "--run-name", "nan"] + tiny("checkpoint_every_iters=1")
    assert run(train, common) == 1
    err = capsys.readouterr().err
    assert "error: non-finite loss" in err and "iteration 2" in err and "last.pth" in err
    kept = _load(tmp_path / "nan/last.pth")
    assert (kept["epoch"], kept["iteration"]) == (0, 1)      # the checkpoint of step 1 is intact
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_resume_names_a_hand_edited_config_yaml_and_applies_it_only_through_config(straight, tmp_path, standin):
    common, straight_dir = straight
    edited = yaml.safe_load((straight_dir / "config.yaml").read_text())
    edited["lr"] = 1e-3
    for name in ("ignored", "applied"):                      # finished runs: a resume trains nothing
        (tmp_path / name).mkdir()
        os.link(straight_dir / "last.pth", tmp_path / name / "last.pth")
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(edited))
    # it used to be overwritten without a word
    assert run(train, common + ["--resume-from", tmp_path / "ignored/last.pth"]) == 0
    log = (tmp_path / "ignored/train.log").read_text()
    line = [line for line in log.splitlines() if "differs from the config this resume uses" in line]
    assert len(line) == 1 and "lr (file 0.001, used 0.0005): not applied (pass --config" in line[0]
    assert yaml.safe_load((tmp_path / "ignored/config.yaml").read_text())["lr"] == 5e-4
    applied = tmp_path / "applied/config.yaml"
    assert run(train, common + ["--resume-from", tmp_path / "applied/last.pth", "--config", applied]) == 0
    log = (tmp_path / "applied/train.log").read_text()
    assert "differs from the config" not in log and "lr 0.0005 -> 0.001 (set on the optimizer)" in log
    assert yaml.safe_load(applied.read_text())["lr"] == 1e-3

def test_full_disk_is_one_error_in_stderr_and_train_log_and_keeps_last_pth(straight, tmp_path, monkeypatch, capsys,
                                                                           standin):
    """The disk fills while a resumed run rewrites last.pth (its fsync fails, as on a file system
    with delayed allocation; test_predict.py mounts a real small one): one error line on stderr and
    in train.log, exit 2, the earlier last.pth intact."""
    from helpers import fail_fsync_of

    common, straight_dir = straight
    (tmp_path / "full").mkdir()
    os.link(straight_dir / "last.pth", tmp_path / "full" / "last.pth")
    before = (tmp_path / "full" / "last.pth").read_bytes()
    fail_fsync_of(monkeypatch, "/.last.pth.tmp")
    more = with_overrides(common, "epochs=3") + ["--stop-after", "5"]      # one more step, then last.pth
    assert run(train, more + ["--resume-from", tmp_path / "full/last.pth"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    message = f"error: cannot write {str(tmp_path / 'full' / 'last.pth')!r}: No space left on device ("
    assert message in err and " free on " in err
    assert message in (tmp_path / "full/train.log").read_text()
    assert (tmp_path / "full" / "last.pth").read_bytes() == before
    assert [n for n in os.listdir(tmp_path / "full") if n.startswith(".last.pth.tmp")] == []


def _offset_inside_the_largest_tensor(path) -> int:
    """A byte offset in the middle of the largest tensor's data in a torch.save archive (stored, not
    compressed: its bytes follow the member's local header)."""
    with zipfile.ZipFile(path) as archive:
        member = max((m for m in archive.infolist() if "/data/" in m.filename), key=lambda m: m.file_size)
    with open(path, "rb") as f:
        f.seek(member.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return member.header_offset + 30 + name_length + extra_length + member.file_size // 2 // 4 * 4


def test_resume_from_a_checkpoint_changed_on_disk_is_refused(straight, tmp_path, capsys, standin):
    common, straight_dir = straight
    (tmp_path / "rotten").mkdir()
    data = bytearray((straight_dir / "last.pth").read_bytes())
    middle = _offset_inside_the_largest_tensor(straight_dir / "last.pth")
    data[middle:middle + 4] = np.float32(3e38).tobytes()
    (tmp_path / "rotten" / "last.pth").write_bytes(bytes(data))
    more = with_overrides(common, "epochs=3")
    assert run(train, more + ["--resume-from", tmp_path / "rotten/last.pth"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: checkpoint .* is corrupt: tensor '[\w.]+' differs from the SHA-256", err), err
