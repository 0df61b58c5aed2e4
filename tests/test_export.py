"""python -m vipmt.export: a model to share (weights, settings, integrity record), loadable wherever a
checkpoint is, with the same results bit for bit (float32) or from float16-rounded weights (--half)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from helpers import fail_fsync_of, reference_model
from scripts_support import load_script, run, write_dataset
from test_predictor import disc_frame
from utils.checkpoint import INTEGRITY_KEY, save_checkpoint
from utils.runtime import EXIT_USER_ERROR
from vipmt import Predictor
from vipmt.export import _half, main as export_main

test_script = load_script("test")
SIZE = (64, 64)
CONFIG = {"image_size": list(SIZE), "clip_length": 3, "memory_size": 2, "memory_threshold": 0.0,
          "support_shots": 2}
RESUME_ONLY = ("optimizer", "scaler", "rng", "sampler", "iteration", "global_step")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A resumable checkpoint as train.py writes it (Adam state for every trainable parameter)."""
    from config import get_config, update_config

    folder = tmp_path_factory.mktemp("export")
    model = reference_model(0, SIZE)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()                                            # zero gradients: the weights do not move
    config = update_config(get_config(), dict(CONFIG, device="cpu", query_frames=3))
    path = str(folder / "last.pth")
    save_checkpoint(path, model=model, epoch=4, optimizer=optimizer, config=config, best_metric=0.25, best_epoch=3,
                    metrics={"history": [{"epoch": 4, "loss": 1.0}]})
    return folder, path


@pytest.fixture(scope="module")
def exported(full):
    folder, path = full
    out, half = str(folder / "model.pth"), str(folder / "model_fp16.pth")
    assert export_main([path, out]) == 0
    assert export_main([path, half, "--half"]) == 0
    return out, half


@pytest.fixture(scope="module")
def video():
    frames = [disc_frame(t)[0] for t in range(7)]
    supports = [disc_frame(20 + i) for i in range(2)]
    return frames, [s[0] for s in supports], [s[1] for s in supports]


def segment(path, video):
    frames, images, masks = video
    predictor = Predictor.from_checkpoint(path, device="cpu")
    results = list(predictor.segment(frames, images, masks, return_probabilities=True))
    return predictor, results


@pytest.mark.slow
def test_the_export_holds_weights_settings_and_integrity_but_nothing_to_resume(full, exported, capsys):
    _, path = full
    out, _ = exported
    source = torch.load(path, weights_only=True)
    shared = torch.load(out, weights_only=True)
    assert not set(RESUME_ONLY) & set(shared) and set(RESUME_ONLY) <= set(source)
    assert shared["contents"] == "weights" and shared["weights_dtype"] == "float32"
    assert shared["config"] == source["config"] and shared["epoch"] == 4 and shared["best_metric"] == 0.25
    assert shared["metrics"] == source["metrics"]
    assert shared["exported_from"]["file"] == "last.pth" and shared["exported_from"]["contents"] == "full"
    assert list(shared["state_dict"]) == list(source["state_dict"])
    for name, tensor in source["state_dict"].items():
        assert tensor.dtype == shared["state_dict"][name].dtype and torch.equal(tensor, shared["state_dict"][name])
    assert set(shared[INTEGRITY_KEY]["tensors"]) == {f"state_dict.{n}" for n in shared["state_dict"]}
    assert os.path.getsize(out) < 0.6 * os.path.getsize(path)


@pytest.mark.slow
def test_the_export_segments_bit_for_bit_like_the_full_checkpoint(full, exported, video):
    _, path = full
    out, _ = exported
    reference, expected = segment(path, video)
    predictor, results = segment(out, video)
    assert predictor.settings() == reference.settings()
    assert (predictor.settings()["clip_length"], predictor.settings()["memory_size"]) == (3, 2)   # the saved config's
    assert "ours, epoch 4" in predictor.checkpoint
    for a, b in zip(results, expected):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.probability, b.probability) and a.score == b.score


@pytest.mark.slow
def test_half_stores_float16_weights_that_load_as_float32(full, exported, video):
    _, path = full
    out, half = exported
    stored = torch.load(half, weights_only=True)["state_dict"]
    source = torch.load(path, weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    assert os.path.getsize(half) < 0.55 * os.path.getsize(out)
    predictor, results = segment(half, video)
    assert "float16 weights" in predictor.checkpoint
    loaded = predictor.model.state_dict()
    for name, tensor in source.items():                     # exactly the float16 rounding, widened again
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], expected), name
    assert all(np.isfinite(r.probability).all() for r in results)


def test_a_tensor_beyond_float16_stays_float32():
    state = {"small": torch.tensor([1.0, -2.5]), "large": torch.tensor([1.0, 7e4]), "count": torch.tensor(3)}
    halved, kept = _half(state)
    assert kept == ["large"] and halved["large"].dtype == torch.float32 and halved["small"].dtype == torch.float16
    assert halved["count"].dtype == torch.int64


def frames_folder(root: Path, video) -> list:
    frames, images, masks = video
    (root / "frames").mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(root / "frames" / f"{t:05d}.png"), frame[..., ::-1])
    cv2.imwrite(str(root / "s0.png"), images[0][..., ::-1])
    cv2.imwrite(str(root / "m0.png"), masks[0] * 255)
    return ["--video", str(root / "frames"), "--support-images", str(root / "s0.png"), "--support-masks",
            str(root / "m0.png"), "--device", "cpu"]


@pytest.mark.slow
def test_predict_py_takes_the_export_with_the_same_outputs(full, exported, video, tmp_path):
    _, path = full
    out, _ = exported
    common = frames_folder(tmp_path, video)
    for name, checkpoint in (("full", path), ("export", out)):
        assert predict.run(predict.main, ["--checkpoint", checkpoint, "--output", str(tmp_path / name)] + common) == 0
    masks = sorted(os.listdir(tmp_path / "full" / "masks"))
    assert masks and masks == sorted(os.listdir(tmp_path / "export" / "masks"))
    for mask in masks:
        assert (tmp_path / "full" / "masks" / mask).read_bytes() == (tmp_path / "export" / "masks" / mask).read_bytes()
    scores = [json.loads((tmp_path / n / "predictions.json").read_text())["frames"] for n in ("full", "export")]
    assert scores[0] == scores[1]


@pytest.mark.slow
def test_test_py_takes_the_export_with_the_same_numbers(full, exported, tmp_path):
    _, path = full
    out, _ = exported
    data = write_dataset(str(tmp_path / "ytvis"))
    args = ["--data-root", data, "--device", "cpu", "num_workers=0"]
    for name, checkpoint in (("full", path), ("export", out)):
        assert run(test_script, ["--checkpoint", checkpoint, "--output", tmp_path / f"{name}.json"] + args) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("full", "export"))
    assert a["runs"][0]["videos"] == b["runs"][0]["videos"] and a["aggregate"] == b["aggregate"]


# ---- errors ---------------------------------------------------------------------------------------
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_existing_file_is_replaced_only_with_overwrite_and_never_the_source(full, tmp_path, capsys):
    _, path = full
    earlier = tmp_path / "model.pth"
    earlier.write_bytes(b"an earlier export")
    assert export_main([path, str(earlier)]) == EXIT_USER_ERROR
    assert "already exists; pass --overwrite" in one_error_line(capsys)
    assert earlier.read_bytes() == b"an earlier export"
    before = os.path.getsize(path)
    for target in (path, os.path.join(os.path.dirname(path), ".", "last.pth")):
        assert export_main([path, target, "--overwrite"]) == EXIT_USER_ERROR
        assert "is the checkpoint being exported" in one_error_line(capsys)
    assert os.path.getsize(path) == before
    assert export_main([path, str(tmp_path)]) == EXIT_USER_ERROR
    assert "is a directory" in one_error_line(capsys)


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert export_main([str(text), str(tmp_path / "out.pth")]) == EXIT_USER_ERROR
    assert f"checkpoint {str(text)!r}" in one_error_line(capsys)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, other)
    assert export_main([str(other), str(tmp_path / "out.pth")]) == EXIT_USER_ERROR
    assert "does not fit the model" in one_error_line(capsys)
    assert export_main([str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")]) == EXIT_USER_ERROR
    assert "does not exist" in one_error_line(capsys)
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.slow
def test_a_full_disk_leaves_no_file_and_the_earlier_one_intact(full, tmp_path, monkeypatch, capsys):
    _, path = full
    earlier = tmp_path / "model.pth"
    earlier.write_bytes(b"an earlier export")
    fail_fsync_of(monkeypatch, "model.pth")
    assert export_main([path, str(earlier), "--overwrite"]) == EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert f"cannot write {str(earlier)!r}: No space left on device" in line
    assert os.listdir(tmp_path) == ["model.pth"] and earlier.read_bytes() == b"an earlier export"
