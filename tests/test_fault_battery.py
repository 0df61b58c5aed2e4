"""The faults that benchmarks/fault_battery.py found (issue 26, "a new battery of faults"): each was a
loss, a silent wrong result, a hang, a traceback or a wrong refusal, and is now one clear ``error:``
line (exit 2) or handled. Every test here failed on the code before its fix.

Kept fast: the files are tiny, the scripts run in-process and stop before any model is built, except
the session test (a 64x64 model).
"""
from __future__ import annotations

import json
import os
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from config import ConfigError, apply_overrides, get_config, read_config_file
from dataset import DatasetError
from scripts_support import TINY, error_line, load_script, write_dataset
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.runtime import UserError
from vipmt import InputError, Predictor
from vipmt.inputs import prepare_supports, read_image
from vipmt.testrun import check_output_locations

train = load_script("train")
test_script = load_script("test")
predict = load_script("predict")

FIFO_WAIT_S = 20        # a read of a named pipe that is not refused blocks: the test fails after this


def snapshot(folder) -> dict:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def finishes(call, *args):
    """(finished, the exception raised or None) of ``call(*args)`` run on a thread for FIFO_WAIT_S seconds:
    a read of a named pipe blocks until a writer comes, so a call that opens one never finishes."""
    outcome = {}

    def target():
        try:
            call(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        outcome["done"] = True

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(FIFO_WAIT_S)
    return outcome.get("done", False), outcome.get("error")


@pytest.fixture
def fifo(tmp_path):
    """A named pipe; a reader left blocked on it (the code before the fix) is released at the end."""
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    yield path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)     # a blocked reader gets end-of-file
        os.close(fd)
    except OSError:
        pass


# ---- config files ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,text,key", [
    ("c.yaml", "epochs: 1\nlr: 0.001\nepochs: 30\n", "'epochs' twice (lines 1 and 3)"),
    ("c.json", '{"lr": 0.001, "epochs": 2, "lr": 0.1}', "'lr' twice (0.001 and 0.1)"),
])
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, name, text, key):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:       # YAML and JSON both kept the last value without a word
        read_config_file(str(path))
    assert str(caught.value) == f"config file {str(path)!r} gives key {key}; give each key once"


def test_yaml_exponent_floats_are_floats(tmp_path):
    """PyYAML reads 1e-4 (no dot) as a string: it was refused as 'expected float, got '1e-4' (str)'."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 5E-4\nbetas: [9e-1, 0.999]\n")
    assert read_config_file(str(path)) == {"lr": 1e-4, "weight_decay": 5e-4, "betas": [0.9, 0.999]}
    path.write_text("epochs: 1e3\n")                 # an integer key takes no float spelling
    with pytest.raises(ConfigError, match="'epochs': expected int, got '1e3'"):
        read_config_file(str(path))
    path.write_text("lr: nan\n")
    with pytest.raises(ConfigError, match="expected a finite number"):
        read_config_file(str(path))


def test_a_config_file_that_is_no_regular_file_is_named_so(tmp_path, fifo):
    loop = tmp_path / "loop.yaml"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.yaml"
    os.symlink(tmp_path / "gone.yaml", dangling)
    for path, what in ((fifo, "is a named pipe (FIFO), not a regular file"),
                       (loop, "is a symbolic link that loops"),
                       (dangling, f"is a symbolic link to {str(tmp_path / 'gone.yaml')!r}, which does not exist"),
                       ("/dev/null", "is a device, not a regular file")):
        with pytest.raises(ConfigError) as caught:           # was "... does not exist"
            read_config_file(str(path))
        assert str(caught.value).startswith(f"config file {str(path)!r} {what}")


# ---- config values ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", str(2 ** 63), "99999999999999999999"])
def test_a_seed_numpy_or_torch_cannot_take_is_a_config_error(value):
    """seed=-1 and seeds beyond 63 bits were tracebacks (numpy's SeedSequence, torch.manual_seed)."""
    with pytest.raises(ConfigError, match=rf"seed={value}: expected an integer 0 <= seed < 2\*\*63"):
        apply_overrides(get_config(), [f"seed={value}"])
    assert apply_overrides(get_config(), [f"seed={2 ** 63 - 1}"]).seed == 2 ** 63 - 1


def test_train_with_a_negative_seed_is_one_error_line(tmp_path, capsys):
    line = error_line(train, ["--data-root", tmp_path / "no-data", "--output-dir", tmp_path / "runs", "seed=-1"],
                      capsys)
    assert "seed=-1: expected an integer 0 <= seed < 2**63" in line
    assert not (tmp_path / "runs").exists()


def test_the_predictor_refuses_a_seed_it_cannot_use():
    from vipmt.predictor import check_settings

    for seed in (-1, 2 ** 70):
        with pytest.raises(InputError, match="seed="):
            check_settings(seed=seed)


def test_an_empty_output_dir_is_a_config_error():
    """--output-dir "" put the run directories in the current folder without a word."""
    with pytest.raises(ConfigError, match="output_dir='': expected the folder that holds the run directories"):
        apply_overrides(get_config(), ["output_dir="])


@pytest.mark.parametrize("script,argv,option", [
    ("test", ["--checkpoint", ""], "--checkpoint"),          # tested runs/<run>/best.pth instead
    ("test", ["--output", ""], "--output"),
    ("test", ["--save-vis", " "], "--save-vis"),             # wrote no overlays
    ("predict", ["--checkpoint", "x.pth", "--video", "v", "--support-images", "a.jpg", "--support-masks", "a.png",
                 "--output", ""], "--output"),            # "cannot create the lock file '.lock'"
    ("predict", ["--checkpoint", "x.pth", "--video", "v", "--class", "", "--support-images", "a.jpg",
                 "--support-masks", "a.png", "--output", "o"], "--class"),
])
def test_an_empty_path_option_is_refused(script, argv, option, capsys):
    module = {"test": test_script, "predict": predict}[script]
    line = error_line(module, argv, capsys)
    assert line.startswith(f"error: {option} ") and "an empty value" in line
    assert line.endswith("give a name" if option == "--class" else "give a path")


# ---- files that are not what they seem -------------------------------------------------------
def test_a_checkpoint_that_is_no_regular_file_or_a_json_file_is_named_so(tmp_path, fifo):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"aggregate": {}, "runs": []}))
    for path, what in ((fifo, "is a named pipe (FIFO), not a regular file"),
                       ("/dev/null", "is a device, not a regular file"),
                       (results, "is a JSON file (e.g. test.py's results or an annotation file), not a PyTorch "
                                 "checkpoint")):
        with pytest.raises(CheckpointError) as caught:        # "does not exist" / "corrupt ... copy it again"
            load_checkpoint(str(path))
        assert str(caught.value).startswith(f"checkpoint {str(path)!r} {what}")


def test_a_named_pipe_as_an_image_mask_or_frame_is_refused_not_waited_on(tmp_path, fifo):
    """cv2.imread, PIL and torch.load wait forever for a writer of a named pipe."""
    from dataset.check import _decode_image
    from models.backbone import read_weights_file
    from vipmt.video import open_video

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    frames = tmp_path / "frames"
    frames.mkdir()
    os.symlink(fifo, frames / "00000.png")
    for call, args, kind in ((read_image, (fifo,), InputError),
                             (prepare_supports, ([str(image)], [str(fifo)]), InputError),
                             (lambda path: list(open_video(path)), (str(frames),), InputError),
                             (_decode_image, (str(fifo),), DatasetError),
                             (read_weights_file, (str(fifo),), Exception)):
        done, error = finishes(call, *args)
        assert done, f"{getattr(call, '__name__', call)} waits on the named pipe"
        assert isinstance(error, kind) and "named pipe (FIFO)" in str(error), error


def test_a_training_frame_that_is_a_named_pipe_is_a_dataset_error(tmp_path):
    from dataset import YouTubeVISDataset

    data = write_dataset(str(tmp_path / "data"), num_categories=2, frames=3)
    dataset = YouTubeVISDataset(root=data, split="train", group=1)
    video = dataset.videos_of_class(dataset.classes[0])[0]
    path = dataset.frame_path(video, 0)
    os.unlink(path)
    os.mkfifo(path)
    done, error = finishes(dataset.load_image, video, 0)
    try:
        assert done, "load_image waits on the named pipe"
        assert isinstance(error, DatasetError) and f"cannot read frame file {path}: it is a named pipe" in str(error)
    finally:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK)) if not done else None


def test_unreadable_reason_names_what_is_there(tmp_path):
    from utils.fileio import unreadable_reason

    (tmp_path / "file").write_bytes(b"x")
    assert unreadable_reason(str(tmp_path / "file")) is None
    assert unreadable_reason(str(tmp_path / "absent")) == "does not exist"
    assert unreadable_reason(str(tmp_path)) == "is a directory, not a file"


def test_backbone_weights_that_are_a_directory_are_named_so(tmp_path):
    from models import ModelError
    from models.backbone import read_weights_file

    with pytest.raises(ModelError, match=rf"backbone weights {tmp_path} is a directory, not a file"):
        read_weights_file(str(tmp_path))                      # was "backbone weights not found"


def test_a_dataset_root_that_is_a_file_is_named_so(tmp_path):
    from dataset import YouTubeVISDataset

    root = tmp_path / "data.txt"
    root.write_text("x")
    with pytest.raises(DatasetError, match=r"data.txt \(it is a file, not a directory\)"):
        YouTubeVISDataset(root=str(root), split="train", group=1)


# ---- test.py and predict.py never replace what is not their own -------------------------------
def test_test_py_refuses_an_output_that_is_not_its_results(tmp_path, capsys):
    """test.py --output runs/r1/best.pth replaced the checkpoint with the results JSON (and --output
    train.json the annotations). Refused before the checkpoint is read (this one is not even one)."""
    data = write_dataset(str(tmp_path / "data"), num_categories=2, frames=3)
    checkpoint = tmp_path / "best.pth"
    checkpoint.write_bytes(b"PK\x03\x04 the weights")
    annotations = tmp_path / "data" / "train" / "train.json"
    before = {p: p.read_bytes() for p in (checkpoint, annotations)}
    for output, what in ((checkpoint, "a 16-byte file that is not JSON (a checkpoint, a video ...?)"),
                         (annotations, "a JSON file without test.py's 'aggregate' and 'runs'")):
        line = error_line(test_script, ["--data-root", data, "--checkpoint", checkpoint, "--output", output,
                                        "--device", "cpu", *TINY], capsys)
        assert line == (f"error: --output {str(output)!r} already exists and is not a results file of test.py "
                        f"({what}); test.py replaces only its own results. Choose another --output path")
    assert {p: p.read_bytes() for p in before} == before


def test_check_output_locations_replaces_earlier_results(tmp_path):
    earlier = tmp_path / "r.json"
    earlier.write_text(json.dumps({"aggregate": {"mean": {}}, "runs": [], "checkpoint": "x"}))
    check_output_locations(output=str(earlier), save_vis=None)            # test.py's own: replaced
    other = tmp_path / "notes.json"
    other.write_text("[]")
    check_output_locations(output=str(other), save_vis=None, given=False)  # the default path: test.py's folder
    with pytest.raises(UserError, match="is not a results file of test.py"):
        check_output_locations(output=str(other), save_vis=None)


def test_predict_refuses_inputs_among_the_outputs_it_replaces(tmp_path, capsys):
    """predict.py --video out/overlay.mp4 --output out --overwrite replaced its own input video (and a
    support mask taken from out/masks/ was deleted)."""
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "overlay.mp4").write_bytes(b"the earlier overlay")
    (out / "masks" / "00002.png").write_bytes(b"a corrected mask")
    before = snapshot(out)
    from vipmt.outputs import check_inputs_outside

    for options, option, name in ((["--video", out / "overlay.mp4", "--support-masks", "a.png"], "--video",
                                   "overlay.mp4"),
                                  (["--video", "v.mp4", "--support-masks", out / "masks" / "00002.png"],
                                   "--support-masks", "masks")):
        line = error_line(predict, ["--checkpoint", "never-read.pth", "--support-images", "a.jpg", *options,
                                    "--output", out, "--device", "cpu", "--overwrite"], capsys)
        assert line.startswith(f"error: {option} ") and f"is among the outputs that a run into --output " \
                                                          f"{str(out)!r} replaces ({name})" in line
    assert snapshot(out) == before
    check_inputs_outside(str(out), {"--video": [str(tmp_path / "frames")]})     # beside the outputs: fine
    check_inputs_outside(str(tmp_path), {"--video": [str(out)]})                # the folder holding them: fine


# ---- support masks -------------------------------------------------------------------------
def _palette_png(path, indices, palette):
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette + [0, 0, 0] * (256 - len(palette) // 3))
    image.save(path)
    return str(path)


def test_a_palette_mask_reads_its_indices(tmp_path):
    """DAVIS / YouTube-VOS annotations are palette PNGs (object 1 drawn in (128, 0, 0)): OpenCV expands
    them to colours, and the mask was refused as 'has values [0, 128]'."""
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.full((8, 8, 3), 90, np.uint8))
    indices = np.zeros((8, 8), np.uint8)
    indices[2:5, 3:7] = 1
    mask = _palette_png(tmp_path / "mask.png", indices, [0, 0, 0, 128, 0, 0])
    assert np.array_equal(prepare_supports([str(image)], [mask])[1][0], indices)
    indices[0, 0] = 2
    two = _palette_png(tmp_path / "two.png", indices, [0, 0, 0, 128, 0, 0, 0, 128, 0])
    with pytest.raises(InputError, match=r"is a palette \(indexed\) image of 2 objects \(indices 1, 2\)"):
        prepare_supports([str(image)], [two])


def test_a_mask_drawn_in_the_alpha_channel_only_is_named_so(tmp_path):
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.full((8, 8, 3), 90, np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:5, 2:5, 3] = 255
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    with pytest.raises(InputError, match=r"marks pixels only in its alpha \(transparency\) channel"):
        prepare_supports([str(image)], [str(tmp_path / "alpha.png")])       # was "... is empty"


# ---- sessions ---------------------------------------------------------------------------------
def test_a_session_interrupted_mid_clip_refuses_further_frames():
    """A KeyboardInterrupt (a notebook's stop button) inside a clip's model work lost that clip's frames,
    and the session went on with results from the next clip on, without a word."""
    from helpers import reference_model
    from vipmt.errors import SessionBrokenError

    predictor = Predictor(reference_model(1, (64, 64)), clip_length=2)
    session = predictor.start([np.full((64, 64, 3), 200, np.uint8)], [np.ones((64, 64), np.uint8)])
    real, calls = predictor.segmenter.step_classes, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    predictor.segmenter.step_classes = interrupted
    frame = np.zeros((64, 64, 3), np.uint8)
    assert session.add_frame(frame) == []
    with pytest.raises(KeyboardInterrupt):
        session.add_frame(frame)
    for use in (lambda: session.add_frame(frame), session.flush, lambda: session.add_support(frame, np.ones((64, 64)))):
        with pytest.raises(SessionBrokenError, match=r"interrupted by KeyboardInterrupt while it segmented frames "
                                                     r"0-1 \(clip 1\).*Start a new session"):
            use()
    predictor.segmenter.step_classes = real
    fresh = predictor.start([np.full((64, 64, 3), 200, np.uint8)], [np.ones((64, 64), np.uint8)])
    assert fresh.add_frame(frame) == [] and [r.index for r in fresh.add_frame(frame)] == [0, 1]   # a new one works


# ---- python -m synthetic -------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--frames", "--videos-per-class"])
def test_synthetic_zero_is_refused_not_replaced_by_the_default(tmp_path, option, capsys):
    """--frames 0 (and --videos-per-class 0) wrote the default 7 frames (8 videos) without a word."""
    from synthetic.cli import main

    assert main(["youtube_vis", "--root", str(tmp_path / "s"), option, "0"]) == 2
    err = capsys.readouterr().err
    assert "must be >= 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_a_model_loaded_at_another_size_says_what_it_was_trained_with():
    from utils.checkpoint import CheckpointError as Error
    from vipmt.loading import TrainedCheckpoint, model_from_checkpoint
    from helpers import reference_model

    state = reference_model(1, (64, 64)).state_dict()
    trained = TrainedCheckpoint(path="m.pth", contents={"state_dict": state}, config={"image_size": [64, 64]},
                                description="m.pth")
    with pytest.raises(Error, match=r"The model was trained with image_size=64,64 \(its config\)"):
        model_from_checkpoint(trained, (72, 72))
    assert torch.equal(model_from_checkpoint(trained, (64, 64)).model.state_dict()["score_head.fc1.weight"],
                       state["score_head.fc1.weight"])
