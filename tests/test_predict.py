"""predict.py end to end on a synthetic video, and its errors for bad input."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

import predict
from dataset.transforms import letterbox_geometry
from helpers import reference_model
from vipmt import Predictor
from vipmt.predictor import unletterbox

from test_predictor import FRAME_HW, SIZE
from test_predictor import disc_frame as disc_frame_rgb


def disc_frame(t: int) -> tuple[np.ndarray, np.ndarray]:
    """test_predictor's moving disc as a BGR frame (what OpenCV writes), and its 0/1 mask."""
    frame, mask = disc_frame_rgb(t)
    return np.ascontiguousarray(frame[..., ::-1]), mask


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    checkpoint = root / "authors.pth"
    torch.save({"state_dict": reference_model(0, SIZE).state_dict()}, checkpoint)
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, FRAME_HW[::-1])
    for t in range(7):
        writer.write(disc_frame(t)[0])
    writer.release()
    supports, masks = [], []
    for i in range(2):
        frame, mask = disc_frame(20 + i)
        supports.append(str(root / f"support{i}.jpg"))
        masks.append(str(root / f"support{i}.png"))
        cv2.imwrite(supports[-1], frame)
        cv2.imwrite(masks[-1], mask * 255)
    return root, checkpoint, video, supports, masks


def run(workspace, **changes):
    root, checkpoint, video, supports, masks = workspace
    args = {"--checkpoint": str(checkpoint), "--video": str(video), "--output": str(root / "out"),
            "--image-size": [str(s) for s in SIZE], "--device": "cpu",
            "--support-images": supports, "--support-masks": masks, "--overwrite": []}
    args.update(changes)
    argv = []
    for key, value in args.items():
        if value is not None:
            argv += [key, *(value if isinstance(value, list) else [value])]
    return predict.run(predict.main, argv)


@pytest.mark.e2e
@pytest.mark.slow
def test_predict_writes_masks_video_and_scores(workspace):
    root = workspace[0]
    assert run(workspace) == 0
    out = root / "out"
    masks = sorted(os.listdir(out / "masks"))
    assert len(masks) == 7
    first = cv2.imread(str(out / "masks" / masks[0]), cv2.IMREAD_UNCHANGED)
    assert first.shape == FRAME_HW and set(np.unique(first)) <= {0, 255}
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape[:2] == FRAME_HW
        count += 1
    assert count == 7
    report = json.loads((out / "predictions.json").read_text())
    assert [r["frame"] for r in report["frames"]] == [m[:-4] for m in masks]
    assert all(0 < r["score"] < 1 for r in report["frames"])
    assert [name for name in os.listdir(out) if name.startswith(".")] == [".lock"]   # no staging left


def test_unletterbox_inverts_letterbox_geometry():
    mask = np.zeros(SIZE, np.uint8)
    new_h, new_w, top, left = letterbox_geometry(*FRAME_HW, *SIZE)
    mask[top:top + new_h, left:left + new_w // 2] = 1          # left half of the picture
    back = unletterbox(mask, FRAME_HW)
    assert back.shape == FRAME_HW
    assert back[:, : FRAME_HW[1] // 2 - 2].all() and not back[:, FRAME_HW[1] // 2 + 2:].any()


def test_support_without_mask(workspace, capsys):
    assert run(workspace, **{"--support-masks": workspace[4][:1]}) == 2
    assert "no mask for" in capsys.readouterr().err


def test_mask_of_other_size(workspace, tmp_path, capsys):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((10, 10), 255, np.uint8))
    assert run(workspace, **{"--support-masks": [str(small), workspace[4][1]]}) == 2
    assert "must match" in capsys.readouterr().err


def test_empty_mask(workspace, tmp_path, capsys):
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros(FRAME_HW, np.uint8))
    assert run(workspace, **{"--support-masks": [str(empty), workspace[4][1]]}) == 2
    assert "is empty" in capsys.readouterr().err


def test_cuda_on_a_machine_without_it_names_the_option(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run(workspace, **{"--device": "cuda", "--output": str(tmp_path / "out")}) == 2
    assert "CUDA is not available on this machine; use --device cpu" in capsys.readouterr().err


def test_unreadable_video(workspace, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    assert run(workspace, **{"--video": str(broken)}) == 2
    assert "cannot read any frame" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.e2e
def test_predict_writes_what_the_predictor_yields(workspace):
    """predict.py is a thin layer: its files hold the Predictor's masks and scores."""
    root, checkpoint, video, supports, masks = workspace
    assert run(workspace, **{"--output": str(root / "same"), "--memory-threshold": "0"}) == 0
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", image_size=SIZE, memory_threshold=0.0)
    expected = list(predictor.segment(str(video), supports, masks))
    report = json.loads((root / "same" / "predictions.json").read_text())
    settings = {key: report[key] for key in ("image_size", "clip_length", "memory_threshold", "memory_size",
                                             "memory_pool_size", "bf16", "seed", "device")}
    assert settings == {"image_size": list(SIZE), "clip_length": 5, "memory_threshold": 0.0, "memory_size": 5,
                        "memory_pool_size": 256, "bf16": False, "seed": 42, "device": "cpu"}
    assert (report["checkpoint"], report["supports"], report["support_masks"]) == (str(checkpoint), supports, masks)
    assert [r["frame"] for r in report["frames"]] == [r.name for r in expected]
    assert [r["score"] for r in report["frames"]] == [r.score for r in expected]
    for result in expected:
        written = cv2.imread(str(root / "same" / "masks" / f"{result.name}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(written, result.mask * 255)


@pytest.mark.slow
def test_unreadable_frame_midway_leaves_nothing_behind(workspace, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(7):
        cv2.imwrite(str(frames / f"{t:05d}.png"), disc_frame(t)[0])
    (frames / "00007.png").write_bytes(b"truncated")       # read after the first clip was written
    out = tmp_path / "out"
    assert run(workspace, **{"--video": str(frames), "--output": str(out)}) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "00007.png" in err
    assert not out.exists()                     # the folder this run created goes with its lock


@pytest.mark.slow
@pytest.mark.e2e
def test_overlay_video_is_h264_that_browsers_play(workspace):
    import av

    root = workspace[0]
    assert run(workspace, **{"--output": str(root / "h264")}) == 0
    with av.open(str(root / "h264" / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == 7


@pytest.mark.slow
def test_non_empty_output_is_refused_unless_overwrite_and_then_replaced_completely(workspace, tmp_path, capsys):
    out = tmp_path / "reused"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "stale_frame.png").write_bytes(b"from an earlier run")
    assert run(workspace, **{"--output": str(out), "--overwrite": None}) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert os.listdir(out / "masks") == ["stale_frame.png"]            # nothing touched
    assert run(workspace, **{"--output": str(out)}) == 0                 # the helper passes --overwrite
    masks = sorted(os.listdir(out / "masks"))
    report = json.loads((out / "predictions.json").read_text())
    assert masks == sorted(r["frame"] + ".png" for r in report["frames"]) and "stale_frame.png" not in masks


def test_unwritable_output_is_refused_before_the_model_is_loaded(workspace, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", must_not_load)
    assert run(workspace, **{"--output": str(blocker / "out")}) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not a directory" in err and str(blocker) in err


# ---------------------------------------------------------------- nothing lost (issue 20)
def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under ``folder`` (hidden ones too, but the lock file)."""
    files = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            if name == ".lock":
                continue
            path = os.path.join(directory, name)
            files[os.path.relpath(path, folder)] = open(path, "rb").read()
    return files


def earlier_outputs(out) -> dict:
    """A finished run's outputs (stand-ins: the tests compare bytes) in ``out``; returns their snapshot."""
    (out / "masks").mkdir(parents=True)
    for t in range(3):
        (out / "masks" / f"{t:05d}.png").write_bytes(b"earlier mask %d" % t)
    (out / "overlay.mp4").write_bytes(b"earlier video")
    (out / "predictions.json").write_text('{"frames": "earlier"}')
    return snapshot(out)


@pytest.mark.slow
@pytest.mark.e2e
def test_full_disk_keeps_the_earlier_outputs_exactly(workspace, tmp_path, capsys):
    from helpers import fill_filesystem, small_filesystem

    with small_filesystem(tmp_path / "fs", 512) as fs:
        out = fs / "good"
        before = earlier_outputs(out)
        # 36 KiB free: the masks (4 KiB pages each) fit, the video does not (PyAV's write fails); 4 KiB: a mask does not
        for leave_kb, failed_file in ((36, "overlay.mp4"), (4, "masks/00000.png")):
            fill_filesystem(fs, leave_kb * 1024)
            assert run(workspace, **{"--output": str(out)}) == 2
            err = capsys.readouterr().err
            assert "error: cannot write" in err and "No space left on device" in err and f"free on {fs}" in err
            assert "Traceback" not in err
            assert f"/.predict.staging." in err and f"/{failed_file}'" in err
            assert snapshot(out) == before                  # same files, same bytes, no staging left


@pytest.mark.slow
def test_failed_fsync_keeps_the_earlier_outputs_exactly(workspace, tmp_path, capsys, monkeypatch):
    """The disk-full case where no small file system can be mounted: the 4th mask's fsync fails
    (file systems with delayed allocation report a full disk there)."""
    from helpers import fail_fsync_of

    out = tmp_path / "good"
    before = earlier_outputs(out)
    fail_fsync_of(monkeypatch, "/masks/00003.png")
    assert run(workspace, **{"--output": str(out)}) == 2
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "00003.png" in err and "No space left on device" in err
    assert snapshot(out) == before


@pytest.mark.slow
def test_what_a_killed_run_left_is_cleaned_and_masks_get_the_usual_mode(workspace, tmp_path):
    import stat

    out = tmp_path / "killed"
    (out / ".masks.partial.abc123").mkdir(parents=True)           # earlier versions' staging
    (out / ".masks.partial.abc123" / "00000.png").write_bytes(b"half")
    (out / ".predict.staging.0badf00d" / "masks").mkdir(parents=True)
    assert run(workspace, **{"--output": str(out), "--overwrite": None}) == 0   # not "not empty"
    assert sorted(os.listdir(out)) == [".lock", "masks", "overlay.mp4", "predictions.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out / "masks").st_mode) == 0o777 & ~umask          # not mkdtemp's 0700
    assert stat.S_IMODE(os.stat(out / "overlay.mp4").st_mode) == 0o666 & ~umask


def test_a_swap_killed_half_way_is_finished_or_rolled_back(tmp_path):
    from vipmt.outputs import PredictionOutputs

    def interrupted_swap(complete: bool):
        out = tmp_path / f"complete_{complete}"
        staging, retired = out / ".predict.staging.1234abcd", out / ".predict.old.1234abcd"
        (staging / "masks").mkdir(parents=True)
        retired.mkdir()
        (retired / "masks").mkdir()
        (retired / "masks" / "old.png").write_bytes(b"old mask")       # moved aside ...
        (out / "predictions.json").write_text("old report")             # ... not yet
        (staging / "overlay.mp4").write_bytes(b"new video")
        (staging / "predictions.json").write_text("new report")
        if complete:
            (staging / ".complete").write_bytes(b"")
        (out / "overlay.mp4").write_bytes(b"new video")                 # already moved in
        with PredictionOutputs(str(out), overwrite=True):
            pass
        return out

    finished = interrupted_swap(complete=True)
    assert sorted(os.listdir(finished)) == [".lock", "masks", "overlay.mp4", "predictions.json"]
    assert (finished / "predictions.json").read_text() == "new report"
    rolled_back = interrupted_swap(complete=False)
    assert (rolled_back / "masks" / "old.png").read_bytes() == b"old mask"
    assert (rolled_back / "predictions.json").read_text() == "old report"
    assert not any(name.startswith(".predict.") for name in os.listdir(rolled_back))


def test_a_second_writer_of_the_output_is_refused_naming_the_first(workspace, tmp_path, capsys):
    from test_utils_runlock import start_holder

    out = tmp_path / "shared"
    holder = start_holder(out)
    try:
        assert run(workspace, **{"--output": str(out)}) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"error: --output {str(out)!r} is in use by another process: pid {holder.pid}" in err


def truncated_h264(path, frames: int) -> int:
    """An H.264 MP4 of ``frames`` disc frames cut at 60 % of its bytes; returns the frames OpenCV still reads."""
    from utils.video import VideoWriter

    with VideoWriter.open(str(path) + ".full.mp4", fps=8.0, size=FRAME_HW) as writer:
        for t in range(frames):
            writer.write(disc_frame_rgb(t)[0])
    data = open(str(path) + ".full.mp4", "rb").read()
    path.write_bytes(data[: len(data) * 6 // 10])
    capture, readable = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        readable += 1
    return readable


@pytest.mark.slow
@pytest.mark.e2e
def test_truncated_video_is_an_error_unless_allowed(workspace, tmp_path, capsys):
    video = tmp_path / "cut.mp4"
    readable = truncated_h264(video, 12)
    assert 0 < readable < 12
    out = tmp_path / "out"
    assert run(workspace, **{"--video": str(video), "--output": str(out)}) == 2
    err = capsys.readouterr().err
    assert f"ends after {readable} of the 12 frames" in err and "--allow-truncated" in err
    assert not out.exists()                                              # nothing written
    assert run(workspace, **{"--video": str(video), "--output": str(out), "--allow-truncated": []}) == 0
    report = json.loads((out / "predictions.json").read_text())
    assert report["truncated"] == {"declared_frames": 12, "frames_read": readable}
    assert len(report["frames"]) == len(os.listdir(out / "masks")) == readable


def test_frames_named_alike_but_for_the_extension_are_refused(workspace, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("a.jpg", "a.png", "b.png"):
        cv2.imwrite(str(frames / name), disc_frame(0)[0])
    assert run(workspace, **{"--video": str(frames), "--output": str(tmp_path / "out")}) == 2
    err = capsys.readouterr().err
    assert "differ only in the extension (a.jpg, a.png)" in err


def test_extreme_aspect_ratio_is_a_clear_error(workspace, tmp_path, capsys):
    frames = tmp_path / "thin"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.full((2, 3000, 3), 128, np.uint8))
    assert run(workspace, **{"--video": str(frames), "--output": str(tmp_path / "out")}) == 2
    err = capsys.readouterr().err
    assert "video frame 0 is 3000x2: too elongated" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_checkpoint_changed_on_disk_is_refused(workspace, tmp_path, capsys):
    checkpoint = workspace[1]
    data = bytearray(checkpoint.read_bytes())
    middle = len(data) // 2 // 4 * 4                         # inside the backbone's weights
    data[middle:middle + 4] = np.float32(3e38).tobytes()     # finite: only the archive's CRC tells
    rotten = tmp_path / "rotten.pth"
    rotten.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert run(workspace, **{"--checkpoint": str(rotten), "--output": str(out)}) == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint {str(rotten)!r} is corrupt: archive member" in err and "CRC" in err
    assert not out.exists()


# ---------------------------------------------------------------- issue 26 items 4 and 6
KILL_MID_SWAP = """
import os, sys
sys.path.insert(0, {tests!r})
import predict
from vipmt import outputs
real_move, moves = outputs._move, []

def move(source, target):
    moves.append(target)
    if len(moves) == 2:                 # the first staged output is in place, the others are not
        os._exit(137)                   # as kill -9: no cleanup runs
    real_move(source, target)

outputs._move = move
sys.exit(predict.run(predict.main, {argv!r}))
"""


def argv_of(workspace, **changes) -> list:
    root, checkpoint, video, supports, masks = workspace
    args = {"--checkpoint": str(checkpoint), "--video": str(video), "--image-size": [str(s) for s in SIZE],
            "--device": "cpu", "--support-images": supports, "--support-masks": masks}
    args.update(changes)
    return [part for key, value in args.items() if value is not None
            for part in [key, *(value if isinstance(value, list) else [value])]]


@pytest.mark.slow
def test_a_run_killed_mid_swap_is_recovered_and_the_same_command_then_runs(workspace, tmp_path, capsys, caplog):
    """kill -9 while the first run into an empty folder swaps its outputs in; the same command again
    (no --overwrite) completes the swap first, then runs and replaces those outputs with its own,
    saying so (issue 26: it used to refuse "not empty")."""
    import subprocess
    import sys

    out = tmp_path / "out"
    script = KILL_MID_SWAP.format(tests=os.path.dirname(__file__), argv=argv_of(workspace, **{"--output": str(out)}))
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 137, done.stderr[-2000:]
    assert any(name.startswith(".predict.old.") for name in os.listdir(out))       # the swap is half done
    killed_report = json.loads(next((out / name / "predictions.json") for name in os.listdir(out)
                                    if name.startswith(".predict.staging.")).read_text())
    assert run(workspace, **{"--output": str(out), "--overwrite": None}) == 0
    assert "finished replacing the outputs (a run was killed while it swapped them in)" in caplog.text
    assert "this run replaces the outputs of the run that was killed" in caplog.text
    assert sorted(os.listdir(out)) == [".lock", "masks", "overlay.mp4", "predictions.json"]
    report = json.loads((out / "predictions.json").read_text())
    assert [r["frame"] for r in report["frames"]] == [r["frame"] for r in killed_report["frames"]]
    assert sorted(os.listdir(out / "masks")) == sorted(r["frame"] + ".png" for r in report["frames"])


@pytest.mark.slow
def test_earlier_outputs_restored_by_a_roll_back_still_need_overwrite(workspace, tmp_path, capsys):
    """A swap cut before the staged outputs were complete is rolled back: the earlier outputs are
    someone's finished work, so a run without --overwrite is refused, naming what was restored."""
    out = tmp_path / "out"
    assert run(workspace, **{"--output": str(out), "--overwrite": None}) == 0
    retired = out / ".predict.old.1234abcd"
    (out / ".predict.staging.1234abcd" / "masks").mkdir(parents=True)      # incomplete: no .complete
    retired.mkdir()
    os.replace(out / "predictions.json", retired / "predictions.json")     # moved aside, not yet back
    assert run(workspace, **{"--output": str(out), "--overwrite": None}) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "the earlier outputs, restored just now" in err
    assert (out / "predictions.json").is_file() and not retired.exists()


def test_a_dangling_output_link_is_named(workspace, tmp_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone" / "away")
    assert run(workspace, **{"--output": str(link)}) == 2
    err = capsys.readouterr().err
    assert (f"error: --output {str(link)!r} is a dangling symbolic link: it points to "
            f"{str(tmp_path / 'gone' / 'away')!r}, which does not exist") in err
    assert run(workspace, **{"--output": str(link / "inside")}) == 2
    assert f"({str(link)!r}, on its path)" in capsys.readouterr().err


def test_a_full_disk_while_the_lock_writes_its_record_is_one_error_line(workspace, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "good"
    before = earlier_outputs(out)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    assert run(workspace, **{"--output": str(out)}) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {str(out / '.lock')!r}: No space left on device" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert run(workspace, **{"--output": str(tmp_path / "new")}) == 2
    assert not (tmp_path / "new").exists()                       # the folder this run created goes


def test_a_full_file_system_while_the_lock_writes_its_record(workspace, tmp_path, capsys):
    from helpers import fill_filesystem, small_filesystem

    with small_filesystem(tmp_path / "fs", 256) as fs:
        out = fs / "good"
        before = earlier_outputs(out)
        fill_filesystem(fs, 0)
        assert run(workspace, **{"--output": str(out)}) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "No space left on device" in err and "Traceback" not in err
        assert snapshot(out) == before
