"""Metrics on hand-computable masks (expected values worked out by hand in the comments)."""
import math

import numpy as np
import pytest
import torch

from utils.metrics import (
    FewShotEvaluator,
    MetricError,
    boundary_f,
    boundary_f_frame,
    boundary_map,
    confusion_counts,
    jaccard,
    video_consistency,
)


def stripe(h, w, first_col, last_col=None):
    """Mask with object columns first_col..last_col (inclusive; default: to the right edge)."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[:, first_col:(w if last_col is None else last_col + 1)] = 1
    return m


def square(h, w, top, left, side):
    m = np.zeros((h, w), dtype=np.uint8)
    m[top:top + side, left:left + side] = 1
    return m


# ---- J --------------------------------------------------------------------------------
def test_jaccard_empty_and_full():
    empty = np.zeros((4, 6))
    full = np.ones((4, 6))
    assert jaccard(empty, empty).tolist() == [1.0]   # both empty -> 1 by definition
    assert jaccard(full, full).tolist() == [1.0]
    assert jaccard(empty, full).tolist() == [0.0]
    assert jaccard(full, empty).tolist() == [0.0]


def test_jaccard_one_pixel_shift():
    # 2x2 squares, shifted right by one column: overlap 2 pixels, union 6 -> 1/3
    gt = square(5, 5, 1, 1, 2)
    pred = square(5, 5, 1, 2, 2)
    assert jaccard(pred, gt)[0] == pytest.approx(1 / 3)


def test_jaccard_per_frame_video_and_torch_inputs():
    gt = np.stack([square(5, 5, 1, 1, 2), np.zeros((5, 5))])
    pred = np.stack([square(5, 5, 1, 1, 2), square(5, 5, 0, 0, 1)])
    expected = [1.0, 0.0]  # frame 1: GT empty, prediction one pixel -> 0
    assert jaccard(pred, gt).tolist() == expected
    assert jaccard(torch.from_numpy(pred).long(), torch.from_numpy(gt).float()).tolist() == expected
    # [T,1,H,W] is accepted too
    assert jaccard(pred[:, None], gt[:, None]).tolist() == expected


def test_threshold_half():
    gt = np.array([[0.0, 1.0]])
    pred = np.array([[0.4, 0.6]])  # binarised to [0, 1]
    assert jaccard(pred, gt).tolist() == [1.0]


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(MetricError, match=r"\(1, 4, 4\).*\(1, 4, 5\)"):
        jaccard(np.zeros((4, 4)), np.zeros((4, 5)))


# ---- boundary map -----------------------------------------------------------------------
def test_boundary_map_single_pixel():
    m = np.zeros((5, 5), dtype=np.uint8)
    m[2, 2] = 1
    # the pixel itself (differs from its right/lower neighbours) and the three pixels
    # whose right, lower, or lower-right neighbour it is
    expected = np.zeros((5, 5), dtype=bool)
    expected[1, 1] = expected[1, 2] = expected[2, 1] = expected[2, 2] = True
    assert np.array_equal(boundary_map(m), expected)


def test_boundary_map_empty_and_full_masks_have_no_boundary():
    assert not boundary_map(np.zeros((4, 6))).any()
    # full mask: the last row/column only compare inside the image, bottom-right is 0
    assert not boundary_map(np.ones((4, 6))).any()


def test_boundary_map_object_touching_last_row_and_column():
    m = np.zeros((4, 4), dtype=np.uint8)
    m[3, 3] = 1  # bottom-right pixel: never a boundary itself
    expected = np.zeros((4, 4), dtype=bool)
    expected[3, 2] = True   # last row: differs from its right neighbour
    expected[2, 3] = True   # last column: differs from its lower neighbour
    expected[2, 2] = True   # differs from its lower-right neighbour
    assert np.array_equal(boundary_map(m), expected)


def test_boundary_map_vertical_stripe():
    # object in columns 5..9 of a 10x10 image: the boundary is column 4 (all 10 rows)
    bmap = boundary_map(stripe(10, 10, 5))
    expected = np.zeros((10, 10), dtype=bool)
    expected[:, 4] = True
    assert np.array_equal(bmap, expected)


# ---- F ------------------------------------------------------------------------------------
def test_boundary_f_empty_and_full_cases():
    empty, full = np.zeros((8, 8)), np.ones((8, 8))
    obj = square(8, 8, 2, 2, 3)
    assert boundary_f_frame(empty, empty) == (1.0, 1.0, 1.0)       # both boundaries empty
    assert boundary_f_frame(full, full) == (1.0, 1.0, 1.0)         # full masks: no boundary
    assert boundary_f_frame(empty, obj) == (0.0, 1.0, 0.0)         # only prediction's empty
    assert boundary_f_frame(obj, empty) == (0.0, 0.0, 1.0)         # only GT's empty
    assert boundary_f_frame(obj, obj) == (1.0, 1.0, 1.0)


def test_boundary_f_one_pixel_shift_within_and_beyond_tolerance():
    gt = stripe(10, 10, 5)           # boundary column 4
    one = stripe(10, 10, 6)          # boundary column 5: distance 1
    two = stripe(10, 10, 7)          # boundary column 6: distance 2
    # bound_th >= 1 is a radius in pixels (DAVIS convention)
    assert boundary_f(one, gt, bound_th=1).tolist() == [1.0]
    assert boundary_f(two, gt, bound_th=1).tolist() == [0.0]
    assert boundary_f(two, gt, bound_th=2).tolist() == [1.0]


def test_boundary_f_precision_half_recall_one():
    gt = stripe(10, 10, 5)                       # boundary: column 4 (10 px)
    pred = stripe(10, 10, 5)
    pred[:, 0] = 1                               # extra boundary: column 0 (10 px)
    f, precision, recall = boundary_f_frame(pred, gt, bound_th=1)
    assert precision == 0.5 and recall == 1.0
    assert f == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_default_tolerance_is_4_pixels_at_240x424():
    # ceil(0.008 * sqrt(240^2 + 424^2)) = ceil(3.898) = 4
    assert math.ceil(0.008 * math.hypot(240, 424)) == 4
    gt = stripe(240, 424, 200)
    assert boundary_f(stripe(240, 424, 204), gt).tolist() == [1.0]   # 4 px away: inside
    assert boundary_f(stripe(240, 424, 205), gt).tolist() == [0.0]   # 5 px away: outside


# ---- counts / VC --------------------------------------------------------------------------
def test_confusion_counts():
    gt = square(5, 5, 1, 1, 2)       # 4 px
    pred = square(5, 5, 1, 2, 2)     # 4 px, 2 overlapping
    assert confusion_counts(pred, gt) == (2, 2, 2)


def test_vc_video_shorter_than_window_is_skipped():
    video = np.ones((6, 4, 4))
    assert video_consistency(video, video, window=7) is None


def test_vc_perfect_and_empty_prediction():
    gt = np.stack([square(6, 6, 1, 1, 2)] * 7)
    assert video_consistency(gt, gt, window=7) == pytest.approx(1.0)
    assert video_consistency(np.zeros_like(gt), gt, window=7) == 0.0


def test_vc_two_windows():
    gt = np.stack([square(6, 6, 1, 1, 2)] * 8)
    pred = gt.copy()
    pred[7] = 0
    # window 0 (frames 0-6): A == B -> 1; window 1 (frames 1-7): B empty -> 0
    assert video_consistency(pred, gt, window=7) == pytest.approx(0.5)


def test_vc_intersection_over_all_frames_of_window():
    gt = np.stack([square(6, 6, 1, 1, 2)] * 3)      # A = 4 px
    pred = gt.copy()
    pred[1] = square(6, 6, 1, 2, 2)                  # B = A & shifted = 2 px
    assert video_consistency(pred, gt, window=3) == pytest.approx(0.5)


# ---- evaluator --------------------------------------------------------------------------
def test_evaluator_aggregates_frames_then_classes():
    sq = square(6, 6, 1, 1, 2)
    empty = np.zeros((6, 6))
    ev = FewShotEvaluator(vc_window=2)
    # class "a", video 1: frame J = 1, 0 ; video 2: frame J = 1
    ev.add_video("a", np.stack([sq, empty]), np.stack([sq, sq]))
    ev.add_video("a", sq, sq)
    # class "b": one frame, J = 1/3 (shifted square)
    ev.add_video("b", square(6, 6, 1, 2, 2), sq)
    s = ev.summary()
    a, b = s["per_class"]["a"], s["per_class"]["b"]
    assert a["J"] == pytest.approx(2 / 3)            # frame average, not video average (0.75)
    assert a["class_iou"] == pytest.approx(8 / 12)   # TP 8, FN 4
    assert a["frames"] == 3 and a["videos"] == 2
    assert a["VC_2"] == pytest.approx(0.0)           # only video 1 has 2 frames; window score 0
    assert b["J"] == pytest.approx(1 / 3)
    assert b["class_iou"] == pytest.approx(2 / 6)
    assert b["VC_2"] is None                         # no video long enough
    assert s["mean"]["J"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s["mean"]["class_iou"] == pytest.approx((8 / 12 + 2 / 6) / 2)
    assert s["mean"]["VC_2"] == pytest.approx(0.0)   # class b left out of the VC mean
    # F: class a frames: 1 (same), 0 (pred empty), 1 ; class b: square shifted 1 px -> 1
    assert a["F"] == pytest.approx(2 / 3)
    assert b["F"] == pytest.approx(1.0)
    assert s["num_frames"] == 4 and s["num_videos"] == 3


def test_evaluator_merge_equals_single_evaluator():
    sq = square(6, 6, 1, 1, 2)
    one, two, both = FewShotEvaluator(), FewShotEvaluator(), FewShotEvaluator()
    one.add_video(1, sq, sq)
    two.add_video(1, np.zeros((6, 6)), sq)
    both.add_video(1, sq, sq)
    both.add_video(1, np.zeros((6, 6)), sq)
    assert one.merge(two).summary() == both.summary()
    assert both.mean_class_iou() == pytest.approx(0.5)
