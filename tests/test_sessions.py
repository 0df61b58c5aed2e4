"""The Predictor's sessions: several classes on one backbone pass (issue 29 item 1), safe streaming
(issue 29 item 3: warnings for frames never segmented, torch inputs, one error base class) and
reused frame buffers (issue 26 item 4)."""
from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch

from helpers import reference_model
from utils.checkpoint import CheckpointError
from vipmt import InputError, PendingFramesWarning, Predictor, VIPMTError
from vipmt.predictor import prepare_supports

from test_predictor import FRAME_HW, disc_frame

SIZE = (64, 64)
OPTIONS = dict(memory_threshold=0.0, memory_size=3, seed=5)   # every frame reliable: random memory draws
FRAMES = 12                                                    # clips of 5, 5, 2


@pytest.fixture(scope="module")
def model():
    return reference_model(1, SIZE)


@pytest.fixture(scope="module")
def frames():
    return [disc_frame(t)[0] for t in range(FRAMES)]


def support_set(*times):
    pairs = [disc_frame(t) for t in times]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def other_object(t: int):
    """A support of another 'class': the disc frame with a box (not the disc) as its object."""
    frame, _ = disc_frame(t)
    mask = np.zeros(FRAME_HW, np.uint8)
    mask[5:40, 90:140] = 1
    return frame, mask


@pytest.fixture(scope="module")
def classes():
    boxes = [other_object(t) for t in (30, 31, 32)]
    return {"disc": support_set(20, 21),
            "box": ([b[0] for b in boxes], [b[1] for b in boxes]),
            "corner": ([disc_frame(40)[0]], [np.pad(np.ones((30, 30), np.uint8), ((0, 60), (0, 120)))])}


def same_results(got, want) -> bool:
    return (len(got) == len(want) and all(
        a.index == b.index and a.score == b.score and np.array_equal(a.mask, b.mask)
        and (a.probability is None) == (b.probability is None)
        and (a.probability is None or np.array_equal(a.probability, b.probability)) for a, b in zip(got, want)))


# ------------------------------------------------------------------ several classes, one backbone pass
@pytest.mark.slow
def test_segment_classes_equals_segment_per_class_with_one_backbone_pass(model, frames, classes, monkeypatch):
    """3 classes x 12 frames: each class's results are segment's bit for bit, and the backbone sees
    the 12 query frames once plus the 6 support images."""
    predictor = Predictor(model, **OPTIONS)
    alone = {name: list(predictor.segment(frames, *supports, return_probabilities=True))
             for name, supports in classes.items()}
    through_backbone = []
    extract = model.extract_features

    def counted(images):
        through_backbone.append(images.shape[0] * images.shape[1])
        return extract(images)

    monkeypatch.setattr(model, "extract_features", counted)
    together = list(predictor.segment_classes(frames, classes, return_probabilities=True))
    assert sum(through_backbone) == FRAMES + 2 + 3 + 1
    assert [list(per_frame) for per_frame in together] == [list(classes)] * FRAMES
    for name in classes:
        assert same_results([per_frame[name] for per_frame in together], alone[name]), name
    scores = {name: [r.score for r in results] for name, results in alone.items()}
    assert scores["disc"] != scores["box"] != scores["corner"]          # three different classes


@pytest.mark.slow
def test_start_classes_with_a_correction_equals_one_session_per_class(model, frames, classes):
    predictor = Predictor(model, **OPTIONS)
    correction = other_object(6)
    session = predictor.start_classes(classes, keep_frames=True)
    ready = [session.add_frame(frame) for frame in frames[:7]]
    session.add_support("box", *correction)
    ready += [session.add_frame(frame) for frame in frames[7:]]
    together = [per_frame for batch in ready for per_frame in batch] + session.flush()
    assert [len(batch) for batch in ready] == [0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0]
    for name, supports in classes.items():
        single = predictor.start(*supports, keep_frames=True)
        results = [r for frame in frames[:7] for r in single.add_frame(frame)]
        if name == "box":
            single.add_support(*correction)
        results += [r for frame in frames[7:] for r in single.add_frame(frame)] + single.flush()
        assert same_results([per_frame[name] for per_frame in together], results), name
    assert all(np.array_equal(per_frame["disc"].frame, frames[per_frame["disc"].index]) for per_frame in together)
    with pytest.raises(InputError, match="no class 'cat' in this session"):
        session.add_support("cat", *correction)


@pytest.mark.parametrize("classes,message", [
    ({}, "classes must be a non-empty dict"),
    ([("a", 1)], "classes must be a non-empty dict"),
    ({"": ([], [])}, "class names must be non-empty strings"),
    ({"cat": ["a.jpg"]}, r"class 'cat': expected \(support_images, support_masks\), got list of 1"),
    ({"cat": ([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), np.uint8)])}, "class 'cat': support mask 1 is empty"),
])
def test_bad_classes_are_named(model, classes, message):
    with pytest.raises(InputError, match=message):
        Predictor(model).segment_classes([], classes)


# ------------------------------------------------------------------ reused frame buffers (issue 26 item 4)
@pytest.mark.parametrize("keep_frames", [False, True])
@pytest.mark.slow
def test_a_reused_frame_buffer_gives_the_results_of_fresh_arrays(model, frames, keep_frames):
    """A camera loop that fills one buffer in place: the session keeps its own copies."""
    predictor = Predictor(model, **OPTIONS)
    supports = support_set(20, 21)
    fresh = predictor.start(*supports, keep_frames=keep_frames)
    expected = [r for frame in frames for r in fresh.add_frame(frame.copy())] + fresh.flush()
    reused = predictor.start(*supports, keep_frames=keep_frames)
    buffer = np.empty_like(frames[0])
    got = []
    for frame in frames:
        buffer[...] = frame                     # the camera writes the next frame into the same array
        got += reused.add_frame(buffer)
    got += reused.flush()
    assert same_results(got, expected)
    if keep_frames:
        assert all(np.array_equal(r.frame, frames[r.index]) for r in got)
    generated = list(predictor.segment((buffer.__setitem__(Ellipsis, f) or buffer for f in frames), *supports))
    assert same_results(generated, expected)                # a generator that reuses its buffer too


# ------------------------------------------------------------------ frames never segmented (issue 29 item 3)
def test_leaving_a_with_block_with_frames_not_segmented_warns(model, frames):
    predictor = Predictor(model, **OPTIONS)
    with pytest.warns(PendingFramesWarning, match=r"left its with-block with 2 frame\(s\) added but not segmented"):
        with predictor.start(*support_set(20)) as session:
            assert [len(session.add_frame(frame)) for frame in frames[:7]] == [0, 0, 0, 0, 5, 0, 0]
    assert session.pending_frames == 2 and len(session.flush()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # flushed: no warning
        with predictor.start(*support_set(20)) as session:
            session.add_frame(frames[0])
            assert [r.index for r in session.close()] == [0]
        with pytest.raises(InputError, match="this Session is closed"):
            session.add_frame(frames[1])


def test_a_session_dropped_with_frames_not_segmented_warns(model, frames):
    predictor = Predictor(model, **OPTIONS)
    session = predictor.start_classes({"disc": support_set(20)})
    session.add_frame(frames[0])
    with pytest.warns(PendingFramesWarning, match=r"ClassesSession was garbage-collected with 1 frame\(s\)"):
        del session
        gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # discarded on purpose, or a segment() left early: no warning
        session = predictor.start(*support_set(20))
        session.add_frame(frames[0])
        assert session.discard() == 1
        del session
        results = predictor.segment(frames, *support_set(20))
        next(results)
        del results
        gc.collect()


def test_a_mid_stream_flush_moves_later_clip_boundaries(model, frames):
    session = Predictor(model, **OPTIONS).start(*support_set(20))
    counts = [len(session.add_frame(frame)) for frame in frames[:3]] + [len(session.flush())]
    counts += [len(session.add_frame(frame)) for frame in frames[3:9]]
    assert counts == [0, 0, 0, 3, 0, 0, 0, 0, 5, 0]       # the next clip is frames 3-7, not 5-9
    assert session.discard() == 1


# ------------------------------------------------------------------ torch inputs
@pytest.mark.slow
def test_torch_frames_and_masks_equal_numpy(model, frames):
    predictor = Predictor(model, **OPTIONS)
    images, masks = support_set(20, 21)
    expected = list(predictor.segment(frames[:6], images, masks))
    chw = torch.from_numpy(np.stack(frames[:6])).permute(0, 3, 1, 2)
    as_torch = {
        "CHW video, bool masks": (chw, [torch.from_numpy(i).permute(2, 0, 1) for i in images],
                                  [torch.from_numpy(m).bool() for m in masks]),
        "HWC frames, float 0/1 stack": ([torch.from_numpy(f) for f in frames[:6]], torch.from_numpy(np.stack(images)),
                                        torch.from_numpy(np.stack(masks)).float()),
        "CHW frames, uint8 0/255": ([f.permute(1, 2, 0).permute(2, 0, 1) for f in chw], images,
                                    [torch.from_numpy(m * 255) for m in masks]),
    }
    for kind, (video, support_images, support_masks) in as_torch.items():
        assert same_results(list(predictor.segment(video, support_images, support_masks)), expected), kind


def test_a_2d_torch_bool_mask_is_one_mask_not_a_stack():
    image, mask = disc_frame(3)
    rgb, binary = prepare_supports(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask).bool())
    assert len(rgb) == len(binary) == 1 and np.array_equal(rgb[0], image) and np.array_equal(binary[0], mask)


@pytest.mark.parametrize("frame,message", [
    (torch.rand(3, 8, 8), r"uint8 \[h, w, 3\] or \[3, h, w\] \(a torch tensor\); got float32 \[8, 8, 3\] "
                          r"\(floats: .*\.to\(torch.uint8\)\)"),
    (np.zeros((3, 8, 8), np.uint8), r"\(channels first: a numpy frame is \[h, w, 3\]"),
    (torch.zeros(8, 8, dtype=torch.uint8), r"got uint8 \[8, 8\] \(a grayscale image"),
])
def test_bad_torch_and_channels_first_frames(model, frame, message):
    session = Predictor(model).start([np.zeros((8, 8, 3), np.uint8)], [np.ones((8, 8), np.uint8)])
    with pytest.raises(InputError, match=message):
        session.add_frame(frame)


def test_one_error_base_class(model, tmp_path):
    assert issubclass(InputError, VIPMTError) and issubclass(InputError, ValueError)
    with pytest.raises(VIPMTError, match="does not exist") as caught:
        Predictor.from_checkpoint(tmp_path / "missing.pth", device="cpu")
    assert isinstance(caught.value, CheckpointError)          # still what the lower layer raised
    with pytest.raises(VIPMTError, match="expected auto, cpu, cuda"):
        Predictor.from_checkpoint(tmp_path / "missing.pth", device="tpu")
    with pytest.raises(VIPMTError, match="video frame 0 must be an RGB image"):
        list(Predictor(model).segment([np.zeros((8, 8), np.uint8)], *support_set(20)))
