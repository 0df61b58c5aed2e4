"""Few-shot VOS metrics of the test protocol (docs/protocol.md, "Metrics").

Every function takes binary masks as numpy arrays or torch tensors of shape ``[H, W]``
(one frame) or ``[T, H, W]`` (a video); a trailing channel axis of size 1
(``[T, 1, H, W]``) is squeezed. Values are binarised with ``> 0.5`` (``MASK_THRESHOLD``),
so 0/1 masks, boolean masks, int64 predictions and probabilities all work.

* :func:`jaccard` - J, the IoU per frame (1 when both masks are empty).
* :func:`boundary_f` - F, the DAVIS boundary F-measure per frame (``bound_th = 0.008``).
* :func:`confusion_counts` - TP, FP, FN summed over frames (for class IoU).
* :func:`video_consistency` - VC_n of one video (``None`` when it is shorter than n).
* :class:`FewShotEvaluator` - aggregates videos per class: J and F averaged over the
  frames of a class, class IoU = sum TP / sum (TP + FP + FN), VC_n averaged over windows,
  videos and classes; then the mean over classes.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
from skimage.morphology import disk

__all__ = [
    "MASK_THRESHOLD",
    "BOUND_TH",
    "VC_EPSILON",
    "MetricError",
    "to_binary_masks",
    "jaccard",
    "boundary_map",
    "boundary_f",
    "boundary_f_frame",
    "confusion_counts",
    "video_consistency",
    "ClassStats",
    "VideoMetrics",
    "FewShotEvaluator",
]

MASK_THRESHOLD = 0.5      # a pixel is object where the mask value is > this
BOUND_TH = 0.008          # boundary tolerance as a fraction of the image diagonal (DAVIS)
VC_EPSILON = 1e-10        # denominator guard of the VC window score


class MetricError(ValueError):
    """Masks of the wrong shape or mismatching sizes."""


def to_binary_masks(mask: Any) -> np.ndarray:
    """Boolean numpy array ``[T, H, W]`` from a numpy/torch mask ``[H,W]``, ``[T,H,W]`` or ``[T,1,H,W]``."""
    if hasattr(mask, "detach"):  # torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise MetricError(f"expected a mask [H,W], [T,H,W] or [T,1,H,W], got shape {tuple(np.shape(mask))}")
    if arr.dtype == bool:
        return arr
    return arr > MASK_THRESHOLD


def _pair(pred: Any, gt: Any) -> "tuple[np.ndarray, np.ndarray]":
    p, g = to_binary_masks(pred), to_binary_masks(gt)
    if p.shape != g.shape:
        raise MetricError(f"prediction shape {p.shape} and ground-truth shape {g.shape} differ")
    return p, g


def jaccard(pred: Any, gt: Any) -> np.ndarray:
    """J per frame: ``|P & G| / |P | G|``, 1 when both are empty. Returns float64 ``[T]``."""
    p, g = _pair(pred, gt)
    inter = np.logical_and(p, g).sum(axis=(1, 2))
    union = np.logical_or(p, g).sum(axis=(1, 2))
    out = np.ones(len(p), dtype=np.float64)
    nonempty = union > 0
    out[nonempty] = inter[nonempty] / union[nonempty]
    return out


def boundary_map(mask: Any) -> np.ndarray:
    """DAVIS boundary map ``[H, W]`` (bool) of one binary mask ``[H, W]``.

    A pixel is a boundary pixel when it differs from its right, lower or lower-right
    neighbour (outside the image counts as 0), except that the last row compares only with
    the right neighbour, the last column only with the lower one, and the bottom-right
    pixel is never a boundary pixel.
    """
    seg = to_binary_masks(mask)
    if seg.shape[0] != 1:
        raise MetricError(f"boundary_map takes one frame [H,W], got {seg.shape[0]} frames")
    seg = seg[0]
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def _tolerance_radius(height: int, width: int, bound_th: float) -> int:
    """Dilation radius in pixels: ``bound_th`` itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _dilate(bmap: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # cv2.dilate pads with the neutral element (nothing outside the image is set).
    return cv2.dilate(bmap.astype(np.uint8), kernel) > 0


def boundary_f_frame(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> "tuple[float, float, float]":
    """(F, precision, recall) of the boundary measure for one frame ``[H, W]``."""
    p, g = _pair(pred, gt)
    if p.shape[0] != 1:
        raise MetricError(f"boundary_f_frame takes one frame [H,W], got {p.shape[0]} frames")
    radius = _tolerance_radius(p.shape[1], p.shape[2], bound_th)
    kernel = disk(radius).astype(np.uint8)
    pred_b = boundary_map(p[0])
    gt_b = boundary_map(g[0])
    n_pred = int(pred_b.sum())
    n_gt = int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = float(np.logical_and(pred_b, _dilate(gt_b, kernel)).sum()) / n_pred
        recall = float(np.logical_and(gt_b, _dilate(pred_b, kernel)).sum()) / n_gt
    if precision + recall == 0:
        return 0.0, precision, recall
    return 2 * precision * recall / (precision + recall), precision, recall


def boundary_f(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> np.ndarray:
    """F per frame (DAVIS boundary F-measure). Returns float64 ``[T]``."""
    p, g = _pair(pred, gt)
    return np.array([boundary_f_frame(p[t], g[t], bound_th)[0] for t in range(len(p))], dtype=np.float64)


def confusion_counts(pred: Any, gt: Any) -> "tuple[int, int, int]":
    """(TP, FP, FN) pixel counts summed over all frames."""
    p, g = _pair(pred, gt)
    tp = int(np.logical_and(p, g).sum())
    fp = int(np.logical_and(p, ~g).sum())
    fn = int(np.logical_and(~p, g).sum())
    return tp, fp, fn


def video_consistency(pred: Any, gt: Any, window: int = 7) -> Optional[float]:
    """VC_n of one video ``[T, H, W]``; ``None`` when ``T < window`` (the video is skipped).

    For every window of ``window`` consecutive frames, A = pixels that are object in all
    ground-truth frames of the window, B = the same for the predictions; the window scores
    ``|A & B| / (|A| + 1e-10)``; the video's VC is the mean over its ``T - window + 1`` windows.
    """
    p, g = _pair(pred, gt)
    if window < 1:
        raise MetricError(f"VC window must be >= 1, got {window}")
    num_windows = len(p) - window + 1
    if num_windows < 1:
        return None
    scores = []
    for start in range(num_windows):
        a = np.logical_and.reduce(g[start:start + window], axis=0)
        b = np.logical_and.reduce(p[start:start + window], axis=0)
        scores.append(np.logical_and(a, b).sum() / (a.sum() + VC_EPSILON))
    return float(np.mean(scores))


@dataclass
class ClassStats:
    """Running sums of one class."""

    j_values: List[float] = field(default_factory=list)     # per frame
    f_values: List[float] = field(default_factory=list)     # per frame
    vc_values: List[float] = field(default_factory=list)    # per video (long enough ones)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    videos: int = 0

    @property
    def class_iou(self) -> float:
        """sum TP / sum (TP + FP + FN); 1 when the class never appears in GT nor prediction."""
        denom = self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else self.tp / denom


@dataclass
class VideoMetrics:
    """One video's values before aggregation (small and picklable: gathered across processes)."""

    j: np.ndarray                   # J per frame, float64 [T]
    tp: int
    fp: int
    fn: int
    f: Optional[np.ndarray] = None  # F per frame [T] (None when boundaries are not computed)
    vc: Optional[float] = None      # VC_n (None when the video is shorter than n, or not computed)


def _mean_or_none(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


class FewShotEvaluator:
    """Aggregates per-frame metrics into per-class and mean-over-classes numbers.

    ``add_video(class_id, pred [T,H,W], gt [T,H,W])`` for every query video; with
    ``boundary=False`` / ``consistency=False`` the F / VC computations are skipped (training
    validation only needs class IoU). :meth:`summary` returns::

        {"per_class": {class_id: {"J", "F", "class_iou", "VC_7", "frames", "videos"}},
         "mean": {"J", "F", "class_iou", "VC_7"}, "num_classes", "num_frames", "num_videos"}

    J and F are averaged over the frames of a class, then over classes; class IoU is
    computed from the pixel counts of all frames of the class, then averaged over classes;
    VC is averaged over windows, videos of a class, then classes (videos shorter than the
    window are skipped; a class with no long-enough video has VC ``None`` and is left
    out of the mean). The VC key is named ``VC_<window>``.
    """

    def __init__(self, vc_window: int = 7, bound_th: float = BOUND_TH,
                 boundary: bool = True, consistency: bool = True):
        self.vc_window = vc_window
        self.bound_th = bound_th
        self.boundary = boundary
        self.consistency = consistency
        self.classes: "OrderedDict[Any, ClassStats]" = OrderedDict()

    @property
    def vc_key(self) -> str:
        return f"VC_{self.vc_window}"

    def _stats(self, class_id: Any) -> ClassStats:
        if class_id not in self.classes:
            self.classes[class_id] = ClassStats()
        return self.classes[class_id]

    def add_video(self, class_id: Any, pred: Any, gt: Any) -> Dict[str, Any]:
        """Add one query video of ``class_id``; returns its own metrics (J, F, IoU, VC)."""
        return self.add_metrics(class_id, self.video_metrics(pred, gt))

    def video_metrics(self, pred: Any, gt: Any) -> "VideoMetrics":
        """The per-frame values of one video ``[T,H,W]`` that :meth:`add_metrics` accumulates."""
        p, g = _pair(pred, gt)
        tp, fp, fn = confusion_counts(p, g)
        return VideoMetrics(
            j=jaccard(p, g), tp=tp, fp=fp, fn=fn,
            f=boundary_f(p, g, self.bound_th) if self.boundary else None,
            vc=video_consistency(p, g, self.vc_window) if self.consistency else None)

    def add_metrics(self, class_id: Any, metrics: "VideoMetrics") -> Dict[str, Any]:
        """Add one video's :class:`VideoMetrics` (e.g. computed in another process); returns its own
        metrics. Adding the same videos in the same order gives the same numbers as :meth:`add_video`."""
        stats = self._stats(class_id)
        j = metrics.j
        stats.j_values.extend(j.tolist())
        stats.tp += metrics.tp
        stats.fp += metrics.fp
        stats.fn += metrics.fn
        stats.videos += 1
        result: Dict[str, Any] = {"J": float(j.mean()), "frames": len(j)}
        denom = metrics.tp + metrics.fp + metrics.fn
        result["class_iou"] = 1.0 if denom == 0 else metrics.tp / denom
        if self.boundary:
            stats.f_values.extend(metrics.f.tolist())
            result["F"] = float(metrics.f.mean())
        if self.consistency:
            if metrics.vc is not None:
                stats.vc_values.append(metrics.vc)
            result[self.vc_key] = metrics.vc
        return result

    def merge(self, other: "FewShotEvaluator") -> "FewShotEvaluator":
        """Add the accumulated values of ``other`` (e.g. gathered from other DDP ranks)."""
        for class_id, o in other.classes.items():
            s = self._stats(class_id)
            s.j_values.extend(o.j_values)
            s.f_values.extend(o.f_values)
            s.vc_values.extend(o.vc_values)
            s.tp += o.tp
            s.fp += o.fp
            s.fn += o.fn
            s.videos += o.videos
        return self

    def class_iou(self) -> Dict[Any, float]:
        return {c: s.class_iou for c, s in self.classes.items()}

    def mean_class_iou(self) -> float:
        """Mean over classes of the class IoU (the training validation metric); nan if empty."""
        values = list(self.class_iou().values())
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> Dict[str, Any]:
        per_class: Dict[Any, Dict[str, Any]] = OrderedDict()
        for class_id, s in self.classes.items():
            entry: Dict[str, Any] = {
                "J": _mean_or_none(s.j_values),
                "class_iou": s.class_iou,
                "frames": len(s.j_values),
                "videos": s.videos,
            }
            if self.boundary:
                entry["F"] = _mean_or_none(s.f_values)
            if self.consistency:
                entry[self.vc_key] = _mean_or_none(s.vc_values)
            per_class[class_id] = entry
        keys = ["J", "class_iou"] + (["F"] if self.boundary else []) + ([self.vc_key] if self.consistency else [])
        mean = {}
        for key in keys:
            values = [e[key] for e in per_class.values() if e[key] is not None]
            mean[key] = _mean_or_none(values)
        return {
            "per_class": per_class,
            "mean": mean,
            "num_classes": len(per_class),
            "num_frames": sum(e["frames"] for e in per_class.values()),
            "num_videos": sum(e["videos"] for e in per_class.values()),
        }
