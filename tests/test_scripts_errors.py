"""Bad input to train.py / test.py: one line `error: <message>` on stderr and exit status 2."""
import os

import pytest
import torch

from scripts_support import TINY, load_script, run, write_dataset
from scripts_support import error_line as error_of

train = load_script("train")
test_script = load_script("test")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


def test_missing_dataset_says_how_to_run_the_demo(tmp_path, capsys):
    common = ["--data-root", tmp_path / "nowhere", "--backbone-weights", "none", "--output-dir", tmp_path / "runs"]
    for script, extra in ((train, []), (test_script, ["--checkpoint", "none"])):
        msg = error_of(script, common + extra, capsys)
        assert "nowhere" in msg and "not found" in msg
        assert "demo" in msg and "python -m synthetic youtube_vis" in msg
    assert not (tmp_path / "runs").exists()                    # nothing written on bad input


def test_missing_backbone_weights_say_where_to_get_them(data, tmp_path, capsys):
    msg = error_of(train, ["--data-root", data, "--backbone-weights", tmp_path / "resnet50_v2.pth",
                           "--output-dir", tmp_path / "runs"], capsys)
    assert "resnet50_v2.pth" in msg and "pretrain_model/README.md" in msg and "--backbone-weights none" in msg
    assert "https://drive.google.com/" in msg and "python -m models.check_weights" in msg   # link + check command
    assert not (tmp_path / "runs").exists()


def test_unwritable_output_dir_is_refused_before_any_work(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for output_dir in (blocker, blocker / "runs"):
        msg = error_of(train, ["--data-root", data, "--backbone-weights", "none", "--output-dir", output_dir], capsys)
        assert "cannot write the run directory" in msg and f"{str(blocker)!r} is a file, not a directory" in msg
    assert blocker.read_text() == "not a folder" and os.listdir(tmp_path) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any directory")
def test_read_only_output_dir_is_refused_before_any_work(data, tmp_path, capsys):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        msg = error_of(train, ["--data-root", data, "--backbone-weights", "none", "--output-dir", read_only], capsys)
    finally:
        read_only.chmod(0o755)
    assert "cannot write the run directory" in msg and "no permission to create files in" in msg
    assert os.listdir(read_only) == []


def test_a_start_that_fails_before_training_leaves_no_run_folder(data, tmp_path, capsys):
    # not a weights file: found when the model is built, after the run directory was taken and
    # config.yaml / train.log were written
    bad = tmp_path / "resnet50_v2.pth"
    bad.write_bytes(b"<html>a download page, not the weights</html>")
    msg = error_of(train, ["--data-root", data, "--backbone-weights", bad, "--device", "cpu",
                           "--output-dir", tmp_path / "runs" / "nested"] + TINY, capsys)
    assert "resnet50_v2.pth" in msg
    assert not (tmp_path / "runs").exists()                    # the folders this start created are gone


def test_check_data_lists_every_bad_file_before_training(tmp_path, capsys):
    import glob

    root = write_dataset(str(tmp_path / "ytvis"))
    videos = sorted(glob.glob(os.path.join(root, "train", "JPEGImages", "*")))
    broken = []
    for number, video in enumerate(videos):               # one bad frame in every video (train and val classes)
        frame = sorted(glob.glob(os.path.join(video, "*.jpg")))[1]
        data = open(frame, "rb").read()
        with open(frame, "wb") as f:
            f.write(data[: len(data) // 2] if number % 2 else b"not a jpeg")
        broken.append(frame)
    status = run(train, ["--data-root", root, "--backbone-weights", "none", "--device", "cpu",
                         "--output-dir", tmp_path / "runs", "check_data=true"] + TINY)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert f"error: {len(broken)} bad dataset file(s)" in err
    assert all(frame in err for frame in broken)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_checkpoint_with_wrong_keys_names_them(data, tmp_path, capsys):
    from models import VIPMT

    sd = VIPMT(backbone_weights=None, image_size=(64, 64)).state_dict()
    sd.pop("cls.3.bias")
    sd["head.extra"] = torch.zeros(2)
    torch.save({"state_dict": sd}, tmp_path / "wrong.pth")
    msg = error_of(test_script, ["--data-root", data, "--checkpoint", tmp_path / "wrong.pth",
                                 "--device", "cpu", "image_size=64,64"], capsys)
    assert "wrong.pth" in msg and "missing 1: cls.3.bias" in msg and "unexpected 1: head.extra" in msg
    # the same weights at another image size: the score head does not fit, and the message says why
    msg = error_of(test_script, ["--data-root", data, "--checkpoint", tmp_path / "wrong.pth",
                                 "--device", "cpu", "image_size=64,112"], capsys)
    assert "score_head.fc1.weight" in msg and "image_size" in msg


def test_missing_checkpoint(data, tmp_path, capsys):
    msg = error_of(test_script, ["--data-root", data, "--output-dir", tmp_path, "--device", "cpu"], capsys)
    assert "best.pth" in msg and "does not exist" in msg and "train.py" in msg
    msg = error_of(test_script, ["--data-root", data, "--checkpoint", tmp_path / "x.pth"], capsys)
    assert "x.pth" in msg and "does not exist" in msg


def test_resume_with_nothing_to_resume(data, tmp_path, capsys):
    msg = error_of(train, ["--data-root", data, "--output-dir", tmp_path, "--run-name", "fresh", "--resume"], capsys)
    assert "nothing to resume" in msg and os.path.join("fresh", "last.pth") in msg
    assert "--resume-from CHECKPOINT" in msg and "--run-name NAME" in msg and "--resume PATH" not in msg
    msg = error_of(train, ["--data-root", data, "--resume-from", tmp_path / "gone.pth"], capsys)
    assert "gone.pth" in msg
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "authors.pth")
    msg = error_of(train, ["--data-root", data, "--resume-from", tmp_path / "authors.pth"], capsys)
    assert "not a resumable training checkpoint" in msg


def test_existing_run_is_not_overwritten(data, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pth").write_bytes(b"previous run")
    msg = error_of(train, ["--data-root", data, "--backbone-weights", "none", "--output-dir", tmp_path,
                           "--run-name", "run"], capsys)
    assert "already holds a checkpoint" in msg and "--resume" in msg
    assert (tmp_path / "run" / "last.pth").read_bytes() == b"previous run"


@pytest.mark.parametrize("override, fragment", [
    ("image_size=60,112", "multiple of 8"),
    ("image_size=240,420", "multiple of 8"),
    ("epochz=3", "unknown config key 'epochz'"),
    ("lr=fast", "expected a float"),
])
def test_bad_config_values(data, tmp_path, capsys, override, fragment):
    for script in (train, test_script):
        msg = error_of(script, ["--data-root", data, "--output-dir", tmp_path, override], capsys)
        assert fragment in msg


def test_stop_after_zero_is_refused_before_anything_is_written(tmp_path, capsys):
    # it used to train one step and save a full last.pth
    argv = ["--data-root", tmp_path / "no_data", "--device", "cpu", "--backbone-weights", "none",
            "--output-dir", tmp_path / "runs", "--stop-after", "0"]
    assert run(train, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --stop-after 0: expected a number of optimizer steps >= 1") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
