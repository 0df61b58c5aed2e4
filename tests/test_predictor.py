"""vipmt.Predictor: the same masks and scores as segmenting the whole letterboxed video at once,
streaming with bounded memory, and clear errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataset.transforms import TestTransform, letterbox_geometry
from helpers import reference_model
from models import VideoSegmenter
from utils.runtime import UserError
from vipmt import Predictor
from vipmt.predictor import InputError, prepare_supports

SIZE = (64, 112)
FRAME_HW = (90, 150)      # not the model's size: letterbox in, un-letterbox out
FRAMES = 13               # clips of 5, 5, 3: clip 3 draws 5 memory frames of 10 at random
OPTIONS = dict(memory_threshold=0.0, memory_size=5, seed=7)
ROOT = Path(__file__).resolve().parents[1]


def disc_frame(t: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a moving bright disc; returns (RGB frame, 0/1 mask)."""
    h, w = FRAME_HW
    rng = np.random.default_rng(t)
    frame = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 45) ** 2 + (xx - 40 - 6 * t) ** 2 <= 20 ** 2).astype(np.uint8)
    frame[mask > 0] = (240, 200, 40)
    return frame, mask


@pytest.fixture(scope="module")
def model():
    return reference_model(0, SIZE)


@pytest.fixture(scope="module")
def video():
    frames = [disc_frame(t)[0] for t in range(FRAMES)]
    supports = [disc_frame(20 + i) for i in range(2)]
    return frames, [s[0] for s in supports], [s[1] for s in supports]


def whole_video_reference(model, frames, support_images, support_masks):
    """What predict.py computed before streaming: the whole video letterboxed at once, one
    `VideoSegmenter.segment` call, each mask cropped out of the letterbox and resized back."""
    transform = TestTransform(SIZE)
    support_img, support_mask = transform(support_images, support_masks)
    query_img, _ = transform(frames, [np.zeros(f.shape[:2], np.uint8) for f in frames])
    result = VideoSegmenter(model, memory_threshold=OPTIONS["memory_threshold"], memory_size=OPTIONS["memory_size"]
                            ).segment(query_img, support_img, support_mask,
                                      generator=torch.Generator().manual_seed(OPTIONS["seed"]))
    new_h, new_w, top, left = letterbox_geometry(*FRAME_HW, *SIZE)
    masks = [cv2.resize(m[top:top + new_h, left:left + new_w].astype(np.uint8), FRAME_HW[::-1],
                        interpolation=cv2.INTER_NEAREST) for m in result.pred.numpy()]
    return masks, result.score.tolist()


def test_streaming_equals_the_whole_video_path(model, video, tmp_path):
    frames, support_images, support_masks = video
    ref_masks, ref_scores = whole_video_reference(model, frames, support_images, support_masks)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"f{t:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))   # lossless
    predictor = Predictor(model, **OPTIONS)
    inputs = {"array": np.stack(frames), "generator": (f for f in frames), "folder": str(folder)}
    for kind, source in inputs.items():
        results = list(predictor.segment(source, support_images, support_masks))
        assert [r.index for r in results] == list(range(FRAMES)), kind
        assert [r.name for r in results] == ([f"f{t:03d}" for t in range(FRAMES)] if kind == "folder" else [None] * FRAMES)
        assert [r.score for r in results] == ref_scores, kind
        for r, ref in zip(results, ref_masks):
            assert r.mask.dtype == np.uint8 and r.mask.shape == FRAME_HW and r.frame is None
            assert np.array_equal(r.mask, ref), (kind, r.index)
    assert any(m.any() for m in ref_masks) and any(not m.all() for m in ref_masks)     # masks are not trivial


def test_support_paths_equal_arrays_and_frames_come_back(model, video, tmp_path):
    frames, support_images, support_masks = video
    paths = []
    for i, (image, mask) in enumerate(zip(support_images, support_masks)):
        paths.append((str(tmp_path / f"s{i}.png"), str(tmp_path / f"m{i}.png")))
        cv2.imwrite(paths[-1][0], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(paths[-1][1], mask * 255)
    predictor = Predictor(model, **OPTIONS)
    from_arrays = list(predictor.segment(frames[:6], support_images, [m.astype(bool) for m in support_masks],
                                         keep_frames=True))
    from_paths = list(predictor.segment(frames[:6], [p for p, _ in paths], [m for _, m in paths]))
    assert [r.score for r in from_arrays] == [r.score for r in from_paths]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(from_arrays, from_paths))
    assert all(r.frame is f for r, f in zip(from_arrays, frames))


def test_results_stream_clip_by_clip(model, video):
    """The first clip's results arrive before the video's 6th frame is read."""
    frames, support_images, support_masks = video
    read = []

    def frame_source():
        for t, frame in enumerate(frames):
            read.append(t)
            yield frame

    results = Predictor(model, **OPTIONS).segment(frame_source(), support_images, support_masks)
    first = next(results)
    assert first.index == 0 and read == [0, 1, 2, 3, 4]
    assert len(list(results)) == FRAMES - 1 and len(read) == FRAMES


def test_long_1080p_video_streams_in_bounded_memory():
    """benchmarks/stream_memory.py streams 1920x1080 frames made on the fly (6.2 MB each) with
    every frame reliable: once warm, 100 more frames (622 MB) must not raise the peak RSS by more
    than 64 MB. 150 frames keep the suite fast (~1 s of CPU per 5-frame clip even at 64x64);
    `python benchmarks/stream_memory.py` runs 2,000 frames (12.4 GB, numbers in the README)."""
    frames, warmup = 150, 50
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stream_memory.py"), "--frames", str(frames),
                           "--warmup", str(warmup), "--memory-pool-size", "20"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["frames"] == frames and report["mask_shapes"] == [[1080, 1920]]
    peak = report["peak_rss_mb"]
    assert peak["end"] - peak["warm"] < 64, report
    assert peak["end"] - peak["ready"] < 400, report       # one clip's frames and work, not the video


# ------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model)


def test_input_error_is_a_user_error():
    assert issubclass(InputError, UserError) and issubclass(InputError, ValueError)


@pytest.mark.parametrize("images,masks,message", [
    ([], [], "no support image"),
    ([np.zeros((8, 8, 3), np.uint8)] * 6, [np.ones((8, 8), np.uint8)] * 6, "at most 5"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((8, 8), np.uint8)], "no mask for support image 2"),
    ([np.zeros((8, 8, 3), np.uint8)], [np.ones((8, 8), np.uint8)] * 2, "2 masks for 1 support images"),
    ([np.zeros((8, 8, 3), np.float32)], [np.ones((8, 8), np.uint8)], "support image 1 must be an RGB image, uint8"),
    ([np.zeros((8, 8), np.uint8)], [np.ones((8, 8), np.uint8)], r"uint8 \[h, w, 3\]; got uint8 \[8, 8\]"),
    ([np.zeros((8, 8, 3), np.uint8)], [np.ones((8, 9), np.uint8)], "support mask 1 is 9x8 but support image 1 is 8x8; they must match"),
    ([np.zeros((8, 8, 3), np.uint8)], [np.full((8, 8), 2, np.uint8)], r"values \[2\]; expected 0/255 or 0/1"),
    ([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), np.uint8)], "support mask 1 is empty"),
    ([np.zeros((8, 8, 3), np.uint8)], [np.ones((8, 8, 2), np.uint8)], "must be a 2-D array"),
])
def test_bad_supports(images, masks, message):
    with pytest.raises(InputError, match=message):
        prepare_supports(images, masks)


def test_supports_of_the_wrong_kind():
    with pytest.raises(InputError, match="support masks must be paths or arrays .* got int"):
        prepare_supports([np.zeros((8, 8, 3), np.uint8)], 3)


def test_unreadable_support_files_are_named(tmp_path):
    image, mask = tmp_path / "cat.jpg", tmp_path / "cat.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match=f"cannot read support mask {str(mask)!r}"):
        prepare_supports([str(image)], [str(mask)])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image .*broken.jpg"):
        prepare_supports([str(tmp_path / "broken.jpg")], [str(mask)])


@pytest.mark.parametrize("video,message", [
    ("/nonexistent/video.mp4", "does not exist"),
    (np.zeros((3, 8, 8, 3), np.float32), r"RGB uint8 \[T, h, w, 3\]; got float32"),
    (np.zeros((8, 8, 3), np.uint8), r"\[T, h, w, 3\]; got uint8 \[8, 8, 3\]"),
    (42, "got int"),
])
def test_bad_videos_fail_when_segment_is_called(predictor, video, message):
    support = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match=message):
        predictor.segment(video, [support], [np.ones((8, 8), np.uint8)])


@pytest.mark.parametrize("frames,message", [
    ([], "the video has no frames"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)],
     "video frame 1 is 9x8 but the video's first frame is 8x8"),
    ([np.zeros((8, 8, 3), np.uint16)], r"video frame 0 must be an RGB image, uint8 \[h, w, 3\]; got uint16"),
])
def test_bad_frames_fail_when_reached(predictor, frames, message):
    support = np.zeros((8, 8, 3), np.uint8)
    results = predictor.segment(iter(frames), [support], [np.ones((8, 8), np.uint8)])
    with pytest.raises(InputError, match=message):
        list(results)


def test_bad_frame_files(predictor, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    support = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8)
    with pytest.raises(InputError, match="has no frames"):
        predictor.segment(str(empty), [support[0]], [support[1]])
    (empty / "00000.jpg").write_bytes(b"broken")
    with pytest.raises(InputError, match="cannot read image .*00000.jpg"):
        list(predictor.segment(str(empty), [support[0]], [support[1]]))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    with pytest.raises(InputError, match="cannot read any frame from video"):
        list(predictor.segment(str(broken), [support[0]], [support[1]]))


@pytest.mark.parametrize("options,message", [
    (dict(memory_threshold=1.5), r"memory_threshold=1.5: expected a value in \[0, 1\]"),
    (dict(memory_size=0), "memory_size=0: expected an integer >= 1"),
    (dict(memory_pool_size=-1), "memory_pool_size=-1"),
])
def test_bad_options(model, options, message):
    with pytest.raises(InputError, match=message):
        Predictor(model, **options)
