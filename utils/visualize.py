"""Overlays of predicted vs ground-truth masks and per-video contact sheets (OpenCV).

Per frame: one image, left half = the frame with the ground truth (green), right half = the
frame with the prediction (red), each with its outline, and the frame's J in the corner.
A contact sheet tiles the overlays of a video (at most ``MAX_SHEET_FRAMES``, evenly spaced).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import cv2
import numpy as np

from .fileio import atomic_write_bytes

__all__ = ["denormalize", "tint", "overlay_pair", "contact_sheet", "write_image", "save_video_visualisation"]

# ImageNet statistics the loaders normalise with: x = (rgb / 255 - mean) / std.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
GT_COLOR_BGR = (0, 200, 0)
PRED_COLOR_BGR = (0, 0, 230)
FILL_ALPHA = 0.45
MAX_SHEET_FRAMES = 24
SHEET_COLUMNS = 4
SEPARATOR_PX = 4


def denormalize(image) -> np.ndarray:
    """ImageNet-normalised ``[3,H,W]`` (numpy or torch) -> BGR uint8 ``[H,W,3]``."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    rgb = (np.transpose(image, (1, 2, 0)) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def tint(image: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    """uint8 ``[H,W,3]`` image with the pixels where ``mask`` (``[H,W]``) is nonzero tinted with ``color``
    (in the image's channel order) at :data:`FILL_ALPHA`: the one way an object is drawn."""
    out = image.copy()
    m = mask.astype(bool)
    out[m] = (out[m] * (1 - FILL_ALPHA) + np.asarray(color, dtype=np.float64) * FILL_ALPHA).astype(np.uint8)
    return out


def _overlay(bgr: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    out = tint(bgr, mask, color)
    m = mask.astype(bool)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


def _label(image: np.ndarray, text: str) -> None:
    scale = max(0.3, image.shape[0] / 600)
    cv2.putText(image, text, (3, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (3, int(14 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def overlay_pair(image_bgr: np.ndarray, gt: np.ndarray, pred: np.ndarray, caption: Optional[str] = None) -> np.ndarray:
    """``[H, 2W + sep, 3]``: ground truth (green) | prediction (red)."""
    left = _overlay(image_bgr, gt, GT_COLOR_BGR)
    right = _overlay(image_bgr, pred, PRED_COLOR_BGR)
    _label(left, "GT")
    _label(right, caption or "pred")
    sep = np.full((image_bgr.shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([left, sep, right], axis=1)


def contact_sheet(tiles: Sequence[np.ndarray], columns: int = SHEET_COLUMNS) -> np.ndarray:
    """Tile equally sized images in a grid (at most MAX_SHEET_FRAMES, evenly spaced)."""
    if len(tiles) > MAX_SHEET_FRAMES:
        picks = np.linspace(0, len(tiles) - 1, MAX_SHEET_FRAMES).round().astype(int)
        tiles = [tiles[i] for i in picks]
    h, w = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    sheet = np.full((rows * (h + SEPARATOR_PX), columns * (w + SEPARATOR_PX), 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * (h + SEPARATOR_PX):r * (h + SEPARATOR_PX) + h, c * (w + SEPARATOR_PX):c * (w + SEPARATOR_PX) + w] = tile
    return sheet


def write_image(path: str, image_bgr: np.ndarray) -> str:
    """Encode by extension (.jpg/.png) and write atomically."""
    ok, data = cv2.imencode(os.path.splitext(path)[1] or ".png", image_bgr)
    if not ok:  # pragma: no cover
        raise OSError(f"could not encode image for {path!r}")
    return atomic_write_bytes(path, data.tobytes())


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def save_video_visualisation(out_dir: str, class_name: str, video: str, images, gt, pred,
                             frame_names: Optional[Sequence[str]] = None,
                             frame_scores: Optional[Sequence[float]] = None,
                             frame_j: Optional[Sequence[float]] = None) -> str:
    """Write ``<out_dir>/<class>/<video>/<frame>.jpg`` overlays and ``<out_dir>/<class>/<video>_sheet.jpg``.

    images ``[T,3,H,W]`` normalised; gt / pred ``[T,H,W]`` 0/1 (numpy or torch). Returns the
    contact sheet path.
    """
    to_np = (lambda x: x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x))
    gt, pred = to_np(gt) > 0.5, to_np(pred) > 0.5
    video_dir = os.path.join(out_dir, _safe(class_name), _safe(video))
    tiles = []
    for t in range(len(gt)):
        name = frame_names[t] if frame_names is not None else f"{t:05d}"
        parts = [str(name)]
        if frame_j is not None:
            parts.append(f"J {frame_j[t]:.2f}")
        if frame_scores is not None:
            parts.append(f"s {frame_scores[t]:.2f}")
        tile = overlay_pair(denormalize(images[t]), gt[t], pred[t], " ".join(parts))
        write_image(os.path.join(video_dir, f"{_safe(name)}.jpg"), tile)
        tiles.append(tile)
    return write_image(os.path.join(out_dir, _safe(class_name), f"{_safe(video)}_sheet.jpg"), contact_sheet(tiles))
