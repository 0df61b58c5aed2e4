"""One rule for "a trained run is here" (vipmt.rundir): a fresh start, --auto-resume, --resume and
reproduce.py refuse a run directory that holds best.pth, epoch_NNN.pth or metrics.jsonl but no usable
last.pth (deleted to free space, a dangling symbolic link), naming what is there; nothing is written.
What a start that died before training leaves (config.yaml, train.log, .lock, an empty metrics.jsonl,
tb/) is not a run: the same command may start again."""
import os

import pytest
import torch

from scripts_support import TINY, error_line, load_script, write_dataset

train = load_script("train")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


def trained_run_without_last(run_dir):
    """What a 7-epoch run leaves after `rm last.pth`: best.pth of epoch 7, a weights-only epoch_005.pth,
    metrics.jsonl with 7 lines, config.yaml, train.log, .lock. Returns {name: bytes} of its files."""
    run_dir.mkdir(parents=True)
    torch.save({"format": "vipmt-checkpoint", "epoch": 7, "state_dict": {"w": torch.ones(2)}}, run_dir / "best.pth")
    torch.save({"format": "vipmt-checkpoint", "epoch": 5, "contents": "weights"}, run_dir / "epoch_005.pth")
    (run_dir / "metrics.jsonl").write_text("".join(f'{{"epoch": {e}, "val_mean_class_iou": 0.{e}}}\n'
                                                   for e in range(1, 8)))
    (run_dir / "config.yaml").write_text("epochs: 7\n")
    (run_dir / "train.log").write_text("training finished\n")
    (run_dir / ".lock").write_text("")
    return snapshot(run_dir)


def snapshot(run_dir):
    return {name: (run_dir / name).read_bytes() for name in sorted(os.listdir(run_dir))
            if (run_dir / name).is_file() and name != ".lock"}


def common(data, out):
    return ["--data-root", data, "--device", "cpu", "--backbone-weights", "none", "--output-dir", out] + TINY


def test_a_fresh_start_and_auto_resume_refuse_a_trained_run_without_last_pth(data, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "fold1"
    before = trained_run_without_last(run_dir)
    argv = common(data, tmp_path / "runs") + ["--run-name", "fold1"]
    for extra in ([], ["--auto-resume"]):
        msg = error_line(train, argv + extra, capsys)
        assert "holds best.pth (epoch 7), epoch_005.pth and metrics.jsonl (7 epochs) but no last.pth" in msg, msg
        assert "would overwrite them" in msg
        assert f"--resume-from {run_dir / 'best.pth'}" in msg and "--run-name" in msg and "move these files" in msg
        assert snapshot(run_dir) == before                      # best.pth, metrics.jsonl, ... byte-identical
    msg = error_line(train, argv + ["--resume"], capsys)                  # --resume names what is there too
    assert "--resume: " in msg and "but no last.pth" in msg and f"--resume-from {run_dir / 'best.pth'}" in msg
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("leftover", ["epoch_005.pth", "metrics.jsonl"])
def test_any_trained_file_alone_is_a_run(data, tmp_path, capsys, leftover):
    run_dir = tmp_path / "runs" / "fold1"
    trained_run_without_last(run_dir)
    for name in ("best.pth", "epoch_005.pth", "metrics.jsonl"):
        if name != leftover:
            os.unlink(run_dir / name)
    before = snapshot(run_dir)
    msg = error_line(train, common(data, tmp_path / "runs") + ["--run-name", "fold1", "--auto-resume"], capsys)
    assert f"holds {leftover}" in msg and "but no last.pth" in msg and "--resume-from" not in msg
    assert snapshot(run_dir) == before


def test_a_dangling_last_pth_symlink_is_refused_by_every_start(data, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "fold1"
    before = trained_run_without_last(run_dir)
    os.symlink(tmp_path / "moved" / "last.pth", run_dir / "last.pth")
    argv = common(data, tmp_path / "runs") + ["--run-name", "fold1"]
    for extra in ([], ["--auto-resume"], ["--resume"]):
        msg = error_line(train, argv + extra, capsys)
        assert f"last.pth, a symbolic link to '{tmp_path / 'moved' / 'last.pth'}', which does not exist" in msg, msg
        assert os.path.islink(run_dir / "last.pth") and snapshot(run_dir) == before


def test_a_start_that_died_before_training_may_start_again(data, tmp_path, capsys):
    """config.yaml, train.log, .lock, an empty metrics.jsonl and tb/ are what a start writes before its first
    checkpoint: not a run. The same command passes the guard (and here stops at the next check, a batch size
    larger than the split, before building the model)."""
    from vipmt.rundir import run_contents

    run_dir = tmp_path / "runs" / "fold1"
    (run_dir / "tb").mkdir(parents=True)
    for name in ("config.yaml", "train.log", ".lock", "metrics.jsonl"):
        (run_dir / name).write_text("")
    contents = run_contents(str(run_dir))
    assert not contents.trained and not contents.resumable
    msg = error_line(train, common(data, tmp_path / "runs") + ["--run-name", "fold1", "batch_size=100"], capsys)
    assert "batch_size=100" in msg and "holds" not in msg
    msg = error_line(train, common(data, tmp_path / "runs") + ["--run-name", "fold1", "--auto-resume",
                                                                "batch_size=100"], capsys)
    assert "batch_size=100" in msg


def test_reproduce_refuses_a_fold_with_epoch_files_or_metrics_but_no_checkpoint(data, tmp_path):
    from utils.runtime import UserError
    from vipmt.cli import resolve_config
    from vipmt.reproduce import FoldRun, training_status

    values = {"youtube_vis_root": data, "output_dir": str(tmp_path / "runs"), "group": 1, "epochs": 7}
    fold = FoldRun(group=1, values=values, cfg=resolve_config({}, values))
    assert training_status(fold) == "new"
    run_dir = tmp_path / "runs" / "youtube_vis_group1"
    trained_run_without_last(run_dir)
    assert training_status(fold) == "finished"            # best.pth and metrics.jsonl of the last epoch: reused
    os.unlink(run_dir / "best.pth")
    before = snapshot(run_dir)
    with pytest.raises(UserError, match=r"fold 1: run directory .* holds epoch_005.pth and metrics.jsonl \(7 "
                                        r"epochs\) but no last.pth: it cannot be continued"):
        training_status(fold)
    os.unlink(run_dir / "epoch_005.pth")
    with pytest.raises(UserError, match=r"holds metrics.jsonl \(7 epochs\) but no last.pth"):
        training_status(fold)
    assert (run_dir / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
