"""Bad input to train.py / test.py: one line `error: <message>` on stderr and exit status 2."""
import os

import pytest
import torch

from scripts_support import load_script, run, write_dataset

train = load_script("train")
test_script = load_script("test")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


def error_of(script, argv, capsys):
    status = run(script, argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


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
    assert not (tmp_path / "runs").exists()


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
