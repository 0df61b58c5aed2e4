"""predict.py's command line: several classes in one pass (issue 29 item 1) and config keys as in
train.py and test.py, the checkpoint's settings as defaults (issue 27 item 5)."""
from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
import pytest

import predict
from config import ConfigError
from helpers import reference_model
from utils.checkpoint import save_weights
from vipmt import Predictor

from test_predict import run, workspace  # noqa: F401 - the fixture
from test_predict import disc_frame, FRAME_HW, SIZE


def run_with(workspace, output, *options) -> int:  # noqa: F811
    """predict.py on the workspace's video and checkpoint with ``options`` as given (repeats allowed)."""
    root, checkpoint, video, supports, masks = workspace
    return predict.run(predict.main, ["--checkpoint", str(checkpoint), "--video", str(video), "--device", "cpu",
                                      "--image-size", *map(str, SIZE), "--output", str(output), *options])


@pytest.fixture(scope="module")
def box_supports(workspace):  # noqa: F811
    """A second 'class': a box in the corner of two disc frames (BGR files, as OpenCV writes them)."""
    root = workspace[0]
    images, masks = [], []
    for i in range(2):
        frame, _ = disc_frame(30 + i)
        mask = np.zeros(FRAME_HW, np.uint8)
        mask[5:40, 90:140] = 255
        images.append(str(root / f"box{i}.jpg"))
        masks.append(str(root / f"box{i}.png"))
        cv2.imwrite(images[-1], frame)
        cv2.imwrite(masks[-1], mask)
    return images, masks


@pytest.mark.slow
def test_several_classes_write_masks_per_class_equal_to_one_class_at_a_time(workspace, box_supports, tmp_path):  # noqa: F811
    root, checkpoint, video, supports, masks = workspace
    out = tmp_path / "classes"
    assert run_with(workspace, out, "--class", "disc", "--support-images", *supports, "--support-masks", *masks,
                    "--class", "box", "--support-images", *box_supports[0], "--support-masks", *box_supports[1]) == 0
    report = json.loads((out / "predictions.json").read_text())
    assert list(report["classes"]) == ["disc", "box"] and "frames" not in report
    assert report["classes"]["box"]["supports"] == box_supports[0] and report["classes"]["disc"]["color"] == [255, 0, 0]
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", image_size=SIZE)
    for name, (images, class_masks) in {"disc": (supports, masks), "box": box_supports}.items():
        expected = list(predictor.segment(str(video), images, class_masks))
        assert [r["score"] for r in report["classes"][name]["frames"]] == [r.score for r in expected], name
        assert sorted(os.listdir(out / "masks" / name)) == [f"{r.name}.png" for r in expected]
        for result in expected:
            written = cv2.imread(str(out / "masks" / name / f"{result.name}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(written, result.mask * 255), (name, result.name)
    scores = [[r["score"] for r in report["classes"][name]["frames"]] for name in ("disc", "box")]
    assert scores[0] != scores[1]
    capture, frames = cv2.VideoCapture(str(out / "overlay.mp4")), 0
    while capture.read()[0]:
        frames += 1
    assert frames == 7 == len(report["classes"]["disc"]["frames"])


@pytest.mark.parametrize("options,message", [
    (["--support-images", "a.jpg", "--support-images", "b.jpg", "--support-masks", "a.png", "--support-masks", "b.png"],
     "2 --support-images and 2 --support-masks lists: for several classes put --class NAME before each"),
    (["--class", "a", "--class", "b", "--support-images", "a.jpg", "--support-masks", "a.png"],
     "2 --class names, 1 --support-images and 1 --support-masks lists"),
    (["--class", "a/b", "--support-images", "a.jpg", "--support-masks", "a.png"],
     "--class 'a/b': a class name is a folder name in masks/"),
    (["--class", "a", "--support-images", "a.jpg", "--support-masks", "a.png",
      "--class", "a", "--support-images", "b.jpg", "--support-masks", "b.png"], "--class 'a' given more than once"),
])
def test_bad_class_arguments(workspace, tmp_path, capsys, options, message):  # noqa: F811
    assert run_with(workspace, tmp_path / "out", *options) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_support_of_one_class_names_the_class(workspace, box_supports, tmp_path, capsys):  # noqa: F811
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros(FRAME_HW, np.uint8))
    assert run_with(workspace, tmp_path / "out", "--class", "disc", "--support-images", *workspace[3],
                    "--support-masks", *workspace[4], "--class", "box", "--support-images", box_supports[0][0],
                    "--support-masks", str(empty)) == 2
    assert f"error: --class 'box': support mask {str(empty)!r} is empty" in capsys.readouterr().err


# ------------------------------------------------------------------ config keys (issue 27 item 5)
@pytest.fixture(scope="module")
def our_checkpoint(tmp_path_factory):
    """Our weights-only checkpoint of the test model, whose config says clips of 3."""
    path = str(tmp_path_factory.mktemp("ours") / "ours.pth")
    save_weights(path, model=reference_model(0, SIZE), epoch=1,
                 config={"image_size": list(SIZE), "clip_length": 3, "memory_size": 2, "memory_threshold": 0.6})
    return path


def recorded_settings(out) -> dict:
    report = json.loads((out / "predictions.json").read_text())
    return {key: report[key] for key in ("image_size", "clip_length", "memory_threshold", "memory_size",
                                         "memory_pool_size", "bf16", "seed")}


@pytest.mark.slow
def test_config_keys_override_the_checkpoints_settings_with_a_log_line(workspace, our_checkpoint, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    out = tmp_path / "keys"
    assert run(workspace, **{"--checkpoint": our_checkpoint, "--output": str(out), "--image-size": None}) == 0
    assert recorded_settings(out) == {"image_size": list(SIZE), "clip_length": 3, "memory_threshold": 0.6,
                                      "memory_size": 2, "memory_pool_size": 256, "bf16": False, "seed": 42}
    assert "given replaces the checkpoint's" not in caplog.text
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"memory_size": 4, "seed": 3, "lr": 0.1}))
    argv = ["clip_length=4", "memory_threshold=0.5", "--config", str(config), "--memory-pool-size", "7",
            "--checkpoint", our_checkpoint, "--video", str(workspace[2]), "--device", "cpu", "--output", str(out),
            "--overwrite", "--support-images", *workspace[3], "--support-masks", *workspace[4]]
    assert predict.run(predict.main, argv) == 0
    assert recorded_settings(out) == {"image_size": list(SIZE), "clip_length": 4, "memory_threshold": 0.5,
                                      "memory_size": 4, "memory_pool_size": 7, "bf16": False, "seed": 3}
    assert "clip_length=4 given replaces the checkpoint's clip_length=3" in caplog.text
    assert "memory_size=4 given replaces the checkpoint's memory_size=2" in caplog.text
    assert f"--config {config}: predict.py reads image_size" in caplog.text and "not used: lr" in caplog.text


@pytest.mark.parametrize("argv,message", [
    (["lr=0.1"], "lr: not a setting of predict.py; it reads image_size, clip_length"),
    (["memory_pool_size=3"], "predict.py's memory pool is predictor_memory_pool_size, also --memory-pool-size"),
    (["clip_length=0"], "clip_length=0: expected an integer >= 1"),
    (["image_size=60,60"], "image_size"),
    (["--bf16", "test_bf16=false"], "conflicting values for config key 'test_bf16'"),
    (["--memory-pool-size", "3", "predictor_memory_pool_size=4"], "conflicting values"),
])
def test_bad_config_values_are_refused_before_any_work(argv, message):
    parser = predict.build_parser()
    required = ["--checkpoint", "c.pth", "--video", "v.mp4", "--support-images", "a.jpg", "--support-masks", "a.png",
                "--output", "out"]
    with pytest.raises(ConfigError, match=message):
        predict.settings_from(parser.parse_args(argv + required))


def test_documented_options_are_aliases_of_config_keys():
    parser = predict.build_parser()
    args = parser.parse_args(["--bf16", "--memory-pool-size", "9", "--image-size", "64", "112", "--clip-length", "1",
                              "--memory-threshold", "0.7", "--memory-size", "2", "--seed", "3", "--device", "cpu",
                              "--checkpoint", "c.pth", "--video", "v.mp4", "--support-images", "a.jpg",
                              "--support-masks", "a.png", "--output", "out"])
    assert predict.settings_from(args) == {"test_bf16": True, "predictor_memory_pool_size": 9, "image_size": [64, 112],
                                           "clip_length": 1, "memory_threshold": 0.7, "memory_size": 2, "seed": 3,
                                           "device": "cpu"}


def test_an_override_read_as_a_support_file_is_named(workspace, tmp_path, capsys):  # noqa: F811
    assert run(workspace, **{"--output": str(tmp_path / "out"), "--support-masks": workspace[4] + ["clip_length=2"]}) == 2
    assert "clip_length=2: a key=value override was read as a support file; put the overrides before" in \
        capsys.readouterr().err


def test_help_comes_from_the_config_comments(capsys):
    with pytest.raises(SystemExit):
        predict.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a frame with predicted score >= this becomes memory" in text           # config/config.py's comment
    assert "--memory-pool-size" in text and "--predictor-memory-pool-size" in text and "--config FILE" in text
    assert "key=value" in text and "--class NAME" in text and "--lr" not in text
