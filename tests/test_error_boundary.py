"""The scripts' one error boundary (utils.runtime.run_cli) and the faults that used to cross it as
tracebacks: a full disk while a lock writes its record or a log file is closed, a config file that
is not UTF-8, empty or a directory, a checkpoint's bad saved config, a read-only file system, a
duplicate video id. Each is one ``error:`` line, exit status 2, and what was there before is intact.
"""
from __future__ import annotations

import ast
import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch

import predict
from helpers import fill_filesystem, small_filesystem
from scripts_support import TINY, load_script, run, write_dataset
from utils.checkpoint import CheckpointError, save_checkpoint, save_weights
from utils.fileio import WriteError, unwritable_reason, write_error
from utils.runlock import LOCK_FILE, RunLock
from utils.runtime import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli

ROOT = Path(__file__).resolve().parents[1]
train = load_script("train")
test_script = load_script("test")


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def earlier_outputs(out: Path) -> dict:
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "00000.png").write_bytes(b"earlier mask")
    (out / "overlay.mp4").write_bytes(b"earlier video")
    (out / "predictions.json").write_text('{"frames": "earlier"}')
    return snapshot(out)


def predict_into(out: Path, checkpoint: str = "never-read.pth", *extra: str) -> int:
    """predict.py as the command line runs it; the lock of --output is taken before anything is read."""
    return predict.run(predict.main, ["--checkpoint", checkpoint, "--video", "none.mp4", "--support-images", "a.jpg",
                                      "--support-masks", "a.png", "--output", str(out), "--device", "cpu",
                                      "--overwrite", *extra])


# ---- the boundary ----------------------------------------------------------------------------------
def raising(exc: BaseException):
    def main(argv):
        raise exc
    return main


def test_storage_errors_are_one_error_line_and_others_keep_their_traceback(tmp_path, capsys):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    assert run_cli(raising(full), []) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {str(tmp_path / 'x.json')!r}: No space left on device (") and " free on " in line
    no_file = OSError(errno.EIO, "Input/output error")           # e.g. os.write on a descriptor
    assert run_cli(raising(no_file), []) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: Input/output error (in ") and "test_error_boundary.py" in line
    with pytest.raises(FileNotFoundError):                   # not the storage's fault: a bug keeps its traceback
        run_cli(raising(FileNotFoundError(errno.ENOENT, "No such file or directory", "x")), [])
    with pytest.raises(ZeroDivisionError):
        run_cli(raising(ZeroDivisionError()), [])
    assert run_cli(raising(KeyboardInterrupt()), []) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"


SCRIPTS = ["train.py", "test.py", "predict.py", "reproduce.py", "demo.py", "dataset/check.py",
           "synthetic/__main__.py", "dataset/minivspw_lists.py", "models/check_weights.py", "vipmt/export.py"]
BOUNDARY = {"run", "run_cli"}     # vipmt.cli.run is run_cli with the library's error types


def _calls(node: ast.AST) -> set:
    return {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
            for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_runs_its_main_through_the_boundary(script):
    """Each command line's ``__main__`` calls the boundary, or a ``main`` that returns through it."""
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    mains = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    body = mains[0] if mains else tree                       # synthetic/__main__.py: the module is the main
    called = _calls(body)
    if not called & BOUNDARY:
        assert "main" in called, script
        source = ROOT / ("synthetic/cli.py" if script.startswith("synthetic/") else script)
        defs = [n for n in ast.parse(source.read_text(encoding="utf-8")).body
                if isinstance(n, ast.FunctionDef) and n.name == "main"]
        called = _calls(defs[0])
    assert called & BOUNDARY, f"{script}: its main does not go through utils.runtime.run_cli"


def test_python_m_synthetic_on_a_full_disk_is_one_error_line(tmp_path, capsys):
    from synthetic.cli import main as synthetic_main

    with small_filesystem(tmp_path / "fs", 256) as fs:
        fill_filesystem(fs, 0)
        assert synthetic_main(["youtube_vis", "--root", str(fs / "data"), "--frames", "2", "--height", "64",
                               "--width", "64"]) == EXIT_USER_ERROR
        line = one_error_line(capsys.readouterr().err)
        assert "No space left on device" in line and str(fs) in line


# ---- the lock's record -----------------------------------------------------------------------------
def test_lock_record_on_a_full_disk_is_a_write_error_that_leaves_nothing(tmp_path):
    with small_filesystem(tmp_path / "fs", 64) as fs:
        (fs / "run").mkdir()
        (fs / "run" / "last.pth").write_bytes(b"a checkpoint")
        fill_filesystem(fs, 0)
        for run_dir in (fs / "run", fs / "new" / "nested"):
            with pytest.raises(WriteError) as caught:
                RunLock(str(run_dir)).acquire()
            message = str(caught.value)
            assert f"cannot write {str(run_dir / LOCK_FILE)!r}: No space left on device (" in message
            assert "the lock of run directory" in message and "nothing was written" in message
        assert os.listdir(fs / "run") == ["last.pth"] and (fs / "run" / "last.pth").read_bytes() == b"a checkpoint"
        assert not (fs / "new").exists()                      # the folders this attempt created are gone


def test_lock_record_whose_write_fails_where_no_tmpfs_can_be_mounted(tmp_path, monkeypatch):
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(LOCK_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(WriteError, match="No space left on device"):
        RunLock(str(tmp_path / "run")).acquire()
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    with RunLock(str(tmp_path / "run")):                       # nothing stale stands in the way afterwards
        pass


def test_predict_overwrite_on_a_full_disk_is_one_error_and_keeps_the_outputs(tmp_path, capsys):
    """issue 26: `predict.py --overwrite` on a full disk was `OSError: [Errno 28]` from utils/runlock.py."""
    with small_filesystem(tmp_path / "fs", 256) as fs:
        out = fs / "out"
        before = earlier_outputs(out)
        fill_filesystem(fs, 0)
        assert predict_into(out) == EXIT_USER_ERROR
        line = one_error_line(capsys.readouterr().err)
        assert f"cannot write {str(out / LOCK_FILE)!r}: No space left on device" in line and f"free on {fs}" in line
        assert f"the lock of --output {str(out)!r} cannot be taken" in line
        assert snapshot(out) == before


# ---- log files -------------------------------------------------------------------------------------
def _open_descriptors_of(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return count


def test_closing_a_log_file_on_a_full_disk_is_one_warning(tmp_path, capsys):
    """reproduce.py replaces its log handler between folds: the close flushed a record that the
    full disk refused, and raised."""
    from utils.log import setup_logging

    with small_filesystem(tmp_path / "fs", 64) as fs:
        try:
            setup_logging(str(fs / "a.log"))
            fill_filesystem(fs, 0)
            logging.getLogger("test").info("a line the disk has no room for")
            setup_logging(str(tmp_path / "b.log"))              # closes a.log's handler
            logging.getLogger("test").info("the next log file works")
            logging.shutdown()                                  # what the interpreter does at exit
        finally:
            setup_logging()
        err = capsys.readouterr().err
        assert err.count(f"warning: cannot write the log file {str(fs / 'a.log')!r} (No space left on device)") == 1
        assert "Traceback" not in err and _open_descriptors_of(fs / "a.log") == 0
        assert "the next log file works" in (tmp_path / "b.log").read_text()


# ---- config files ----------------------------------------------------------------------------------
def test_a_config_file_that_is_not_utf8_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("lr: 0.001  # r\xe9glage\n".encode("latin-1"))
    assert run(train, ["--config", bad, "--output-dir", tmp_path / "runs"]) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert f"config file {str(bad)!r} is not UTF-8 text (byte 0xe9 at offset 14)" in line
    assert not (tmp_path / "runs").exists()


def test_config_directory_is_named_as_a_directory(tmp_path, capsys):
    assert run(train, ["--config", tmp_path, "--output-dir", tmp_path / "runs"]) == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert f"config file {str(tmp_path)!r} is a directory" in line and "does not exist" not in line


@pytest.mark.parametrize("name, text", [("empty.yaml", ""), ("comments.yml", "# nothing set yet\n\n"),
                                        ("empty.json", ""), ("bom.yaml", "\ufefflr: 0.001\n")])
def test_an_empty_config_file_is_an_empty_mapping(tmp_path, name, text):
    from config import read_config_file

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_config_file(str(path)) == ({"lr": 0.001} if "lr" in text else {})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


@pytest.mark.slow
def test_an_empty_config_file_trains_with_the_defaults(data, tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    common = ["--data-root", data, "--backbone-weights", "none", "--device", "cpu", "--output-dir", tmp_path]
    assert run(train, ["--config", empty, "--run-name", "r", "--stop-after", "1"] + common + TINY) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "r" / "last.pth").is_file()


# ---- a checkpoint's saved config ------------------------------------------------------------------
BAD_SAVED = {"clip_length": "three"}


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """Our checkpoints (weights-only and resumable) whose saved config holds clip_length='three'. The
    saved config is checked before the weights are loaded into a model, so a tiny module serves."""
    from config import get_config, update_config

    folder = tmp_path_factory.mktemp("bad_config")
    module = torch.nn.Linear(2, 2)
    config = update_config(get_config(), {"image_size": [64, 64], "device": "cpu", "output_dir": str(folder),
                                          "run_name": "run"})
    config = dict(config, **BAD_SAVED)
    weights = str(folder / "weights.pth")
    save_weights(weights, model=module, epoch=1, config=config)
    optimizer = torch.optim.Adam(module.parameters())
    (folder / "run").mkdir()
    resumable = str(folder / "run" / "last.pth")
    save_checkpoint(resumable, model=module, epoch=1, optimizer=optimizer, config=config)
    return weights, resumable


def _names_the_checkpoint_and_key(message: str, path: str) -> None:
    assert f"checkpoint {path!r} holds an invalid saved config: config key 'clip_length'" in message
    assert "'three'" in message


def test_predictor_names_the_checkpoint_whose_saved_config_is_bad(bad_checkpoints):
    from vipmt import Predictor

    weights, _ = bad_checkpoints
    with pytest.raises(CheckpointError) as caught:
        Predictor.from_checkpoint(weights, device="cpu")
    _names_the_checkpoint_and_key(str(caught.value), weights)


def test_predict_names_the_checkpoint_whose_saved_config_is_bad(bad_checkpoints, tmp_path, capsys):
    from test_predictor import disc_frame

    import cv2

    frame, mask = disc_frame(0)
    cv2.imwrite(str(tmp_path / "a.jpg"), frame[..., ::-1])
    cv2.imwrite(str(tmp_path / "a.png"), mask * 255)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "00000.jpg"), frame[..., ::-1])
    weights, _ = bad_checkpoints
    status = predict.run(predict.main, ["--checkpoint", weights, "--video", str(frames), "--support-images",
                                        str(tmp_path / "a.jpg"), "--support-masks", str(tmp_path / "a.png"),
                                        "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert status == EXIT_USER_ERROR
    _names_the_checkpoint_and_key(one_error_line(capsys.readouterr().err), weights)
    assert not (tmp_path / "out").exists()


def test_test_py_names_the_checkpoint_whose_saved_config_is_bad(bad_checkpoints, data, tmp_path, capsys):
    weights, _ = bad_checkpoints
    status = run(test_script, ["--checkpoint", weights, "--data-root", data, "--device", "cpu",
                               "--output", tmp_path / "results.json"] + TINY)
    assert status == EXIT_USER_ERROR
    _names_the_checkpoint_and_key(one_error_line(capsys.readouterr().err), weights)


def test_resume_names_the_checkpoint_whose_saved_config_is_bad(bad_checkpoints, data, capsys):
    _, resumable = bad_checkpoints
    before = Path(resumable).read_bytes()
    status = run(train, ["--resume-from", resumable, "--data-root", data, "--device", "cpu"])
    assert status == EXIT_USER_ERROR
    _names_the_checkpoint_and_key(one_error_line(capsys.readouterr().err), resumable)
    assert Path(resumable).read_bytes() == before


# ---- read-only file systems -------------------------------------------------------------------------
@pytest.fixture
def read_only_fs(tmp_path):
    import subprocess

    with small_filesystem(tmp_path / "ro", 64) as fs:
        (fs / "earlier").mkdir()
        (fs / "earlier" / "predictions.json").write_text("{}")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        yield fs


def test_read_only_file_system_is_named_as_such_not_as_permissions(read_only_fs, capsys):
    fs = read_only_fs
    reason = unwritable_reason(str(fs / "earlier" / "new"))
    assert reason == (f"{str(fs / 'earlier')!r} is on a read-only file system (mounted read-only at {fs}): "
                      f"nothing can be written there")
    try:
        (fs / "x.json").write_text("{}")
    except OSError as exc:
        message = str(write_error(str(fs / "x.json"), exc))
    assert message == (f"cannot write {str(fs / 'x.json')!r}: the file system at {fs} is mounted read-only; "
                       f"choose a location on another file system")
    assert predict_into(fs / "earlier") == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert "read-only file system" in line and "permission" not in line and "free on" not in line


# ---- YouTube-VIS annotations -----------------------------------------------------------------------
@pytest.mark.parametrize("second_frames", [3, 2])    # 2: the same length, formerly read as the other video's
def test_a_video_id_given_twice_is_named(tmp_path, second_frames):
    from dataset import DatasetError
    from dataset.youtube_vis import index_annotations

    def video(name, frames):
        return {"id": 7, "file_names": [f"{name}/{i:05d}.jpg" for i in range(frames)], "height": 8, "width": 8}

    def annotation(ann_id, frames):
        return {"id": ann_id, "video_id": 7, "category_id": 1, "segmentations": [[[0, 0, 4, 0, 4, 4]]] * frames}

    path = tmp_path / "train.json"
    path.write_text(json.dumps({"videos": [video("cat_a", 2), video("cat_b", second_frames)],
                                "annotations": [annotation(1, 2), annotation(2, second_frames)],
                                "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(DatasetError) as caught:
        index_annotations(str(path))
    assert str(caught.value) == (f"{path}: video id 7 is given twice, to video entry #0 (folder 'cat_a') and to "
                                 f"entry #1 (folder 'cat_b'); each video needs its own id (the annotations name "
                                 f"their video by it)")
