"""Small synthetic datasets in the real on-disk formats, for tests and the demo.

* :func:`write_synthetic_youtube_vis` writes a YouTube-VIS 2019 tree
  (``train/train.json`` + ``train/JPEGImages/<video>/<frame>.jpg``) with 40 categories;
* :func:`write_synthetic_vspw` writes a VSPW 480p tree (``data/<video>/origin/*.jpg``,
  ``data/<video>/mask/*.png`` holding class ids, ``train.txt``/``val.txt``, the label file) and,
  by default, the MiniVSPW fold lists under ``lists/nminivspw_pascal``.

Every class has its own look: a shape (8 kinds) x a two-colour texture (5 kinds) and a hue of
its own, strongly saturated over desaturated, smoothly textured backgrounds that pan slowly.
Objects are large (10-30 % of the frame), move, rotate and change size; videos hold one or two
instances of their class and often an instance of another class (a distractor that may
occlude); some instances are absent in some frames (``null`` segmentations). Segmentations in
train.json mix uncompressed RLE, compressed RLE and polygons.

The tree is written into a temporary sibling folder and renamed into place at the end, so an
interrupted run leaves no half-written dataset. A ``synthetic.json`` marker records the
parameters; writing again with the same parameters is a no-op, other parameters need
``overwrite=True`` (which only ever deletes a folder carrying the marker).

Command line::

    python -m dataset.synthetic youtube_vis --root data/synthetic_ytvis --seed 0
    python -m dataset.synthetic vspw --root data/synthetic_vspw --seed 0
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from .errors import DatasetError
from utils.fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

MARKER_FILE = "synthetic.json"
JPEG_QUALITY = 92
SHAPES = ("disc", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
TEXTURES = ("solid", "stripes", "checker", "dots", "rings")
# fraction of the circumscribed disc that each shape covers (to size objects by area)
SHAPE_FILL = {"disc": 1.0, "square": 0.64, "triangle": 0.41, "diamond": 0.5, "star": 0.38,
              "cross": 0.52, "ring": 0.75, "hexagon": 0.83}
GOLDEN_ANGLE_DEG = 137.508
PRIMARY_AREA = (0.12, 0.30)       # target object area, fraction of the frame
DISTRACTOR_AREA = (0.05, 0.12)
SECOND_INSTANCE_PROBABILITY = 0.3
DISTRACTOR_PROBABILITY = 0.5
DROP_FRAME_PROBABILITY = 0.2      # the first instance is absent (null) in one frame
ENCODING_WEIGHTS = {"rle_uncompressed": 0.4, "rle_compressed": 0.4, "polygon": 0.2}
MAX_SPEED_FRACTION = 0.06         # per frame, of the frame's smaller side
BACKGROUND_PAN_PX = 2
FRAME_STEP = 5                    # YouTube-VIS names every 5th frame of the source video

# MiniVSPW classes (VSPW ids) of the TTI split, and background "stuff" ids used in masks.
VSPW_CLASS_NAMES = {
    57: "airplane", 52: "bicycle", 55: "ship_or_boat", 85: "bottle_or_cup", 111: "book",
    50: "bus", 49: "car", 62: "cat", 91: "chair_or_seat", 51: "truck",
    63: "dog", 64: "horse", 53: "motorcycle", 61: "person", 90: "table_or_desk",
    109: "flower_pot_or_vase", 93: "sofa", 124: "train", 115: "screen_or_television", 65: "cattle",
    113: "blackboard", 41: "billboard_or_Bulletin_Board", 45: "parasol_or_umbrella",
    46: "cushion_or_carpet", 47: "tent",
}
VSPW_STUFF_NAMES = {0: "others", 1: "wall", 14: "floor", 29: "sky"}
VSPW_NUM_IDS = 125  # VSPW ids 0..124


# ----------------------------------------------------------------------------- appearance
@dataclass(frozen=True)
class ClassLook:
    shape: str
    texture: str
    colour: tuple[float, float, float]       # RGB 0..255
    second: tuple[float, float, float]
    angle: float                             # texture orientation, radians


def class_look(index: int) -> ClassLook:
    """The look of class number ``index`` (0-based): unique shape x texture, own hue."""
    hue = (index * GOLDEN_ANGLE_DEG % 360.0) / 360.0
    colour = tuple(255.0 * c for c in colorsys.hsv_to_rgb(hue, 0.95, 0.95))
    second = tuple(255.0 * c for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.55))
    return ClassLook(shape=SHAPES[index % len(SHAPES)],
                     texture=TEXTURES[(index // len(SHAPES)) % len(TEXTURES)],
                     colour=colour, second=second, angle=(index * 0.7) % math.pi)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[np.ndarray]:
    def ring_points(count, radii, offset=0.0):
        theta = angle + offset + np.arange(count) * 2 * np.pi / count
        radii = np.resize(np.asarray(radii, dtype=np.float64), count)
        return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], 1)

    if shape == "square":
        return [ring_points(4, radius, np.pi / 4)]
    if shape == "triangle":
        return [ring_points(3, radius, -np.pi / 2)]
    if shape == "diamond":
        pts = ring_points(4, radius)
        pts[1::2] = (pts[1::2] - [cx, cy]) * 0.55 + [cx, cy]
        return [pts]
    if shape == "star":
        return [ring_points(10, [radius, 0.45 * radius], -np.pi / 2)]
    if shape == "hexagon":
        return [ring_points(6, radius)]
    if shape == "cross":
        arm = 0.36 * radius
        base = np.array([[arm, -radius], [arm, -arm], [radius, -arm], [radius, arm], [arm, arm],
                         [arm, radius], [-arm, radius], [-arm, arm], [-radius, arm],
                         [-radius, -arm], [-arm, -arm], [-arm, -radius]])
        c, s = math.cos(angle), math.sin(angle)
        return [base @ np.array([[c, s], [-s, c]]) + [cx, cy]]
    raise ValueError(shape)


def shape_mask(shape: str, size: tuple[int, int], cx: float, cy: float, radius: float,
               angle: float) -> np.ndarray:
    """Boolean ``[h, w]`` mask of a class shape (may extend past the frame)."""
    mask = np.zeros(size, dtype=np.uint8)
    centre = (int(round(cx)), int(round(cy)))
    if shape in ("disc", "ring"):
        cv2.circle(mask, centre, int(round(radius)), 1, thickness=-1)
        if shape == "ring":
            cv2.circle(mask, centre, int(round(0.45 * radius)), 0, thickness=-1)
    else:
        polygons = [np.round(p).astype(np.int32) for p in _polygon(shape, cx, cy, radius, angle)]
        cv2.fillPoly(mask, polygons, 1)
    return mask.astype(bool)


def texture_pattern(look: ClassLook, grid: tuple[np.ndarray, np.ndarray], cx: float, cy: float,
                    angle: float, period: float) -> np.ndarray:
    """Boolean ``[h, w]``: True where the texture shows the second colour."""
    ys, xs = grid
    theta = angle + look.angle
    u = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
    v = -(xs - cx) * math.sin(theta) + (ys - cy) * math.cos(theta)
    if look.texture == "solid":
        return np.zeros(xs.shape, dtype=bool)
    if look.texture == "stripes":
        return np.floor(u / period).astype(np.int64) % 2 == 1
    if look.texture == "checker":
        return (np.floor(u / period) + np.floor(v / period)).astype(np.int64) % 2 == 1
    if look.texture == "dots":
        du = u - period * np.round(u / period)
        dv = v - period * np.round(v / period)
        return du * du + dv * dv < (0.3 * period) ** 2
    if look.texture == "rings":
        return np.floor(np.hypot(u, v) / period).astype(np.int64) % 2 == 1
    raise ValueError(look.texture)


def render_background(rng: np.random.Generator, size: tuple[int, int], pad: int) -> np.ndarray:
    """A desaturated, smoothly textured background ``float32 [h+2pad, w+2pad, 3]``."""
    height, width = size[0] + 2 * pad, size[1] + 2 * pad
    base = rng.uniform(70, 170)
    tint = rng.uniform(-18, 18, size=3)
    coarse = rng.uniform(-45, 45, size=(5, 8, 1)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[:, :, None]
    fine = rng.uniform(-10, 10, size=(height, width, 1)).astype(np.float32)
    image = base + tint + smooth + fine
    for _ in range(int(rng.integers(1, 4))):   # a few faint bands
        y0, x0 = int(rng.integers(height)), int(rng.integers(width))
        y1, x1 = y0 + int(rng.integers(4, height // 2 + 5)), x0 + int(rng.integers(4, width // 2 + 5))
        image[y0:y1, x0:x1] += rng.uniform(-25, 25)
    return np.clip(image, 0, 255).astype(np.float32)


def _reflect(value: float, low: float, high: float) -> float:
    """Bounce ``value`` into ``[low, high]`` (a point moving between two walls)."""
    if high <= low:
        return (low + high) / 2
    span = high - low
    phase = (value - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


@dataclass
class Track:
    """One moving object instance of a synthetic video."""

    class_index: int          # 0-based index into the dataset's class list
    radius: float
    x0: float
    y0: float
    vx: float
    vy: float
    angle0: float
    spin: float
    growth: float
    present: list[bool]

    def pose(self, t: int, size: tuple[int, int]):
        height, width = size
        radius = self.radius * (1.0 + self.growth * t)
        margin = 0.6 * radius
        cx = _reflect(self.x0 + self.vx * t, margin, width - margin)
        cy = _reflect(self.y0 + self.vy * t, margin, height - margin)
        return cx, cy, radius, self.angle0 + self.spin * t


def _new_track(rng: np.random.Generator, class_index: int, look: ClassLook, size: tuple[int, int],
               area_range: tuple[float, float], frames: int) -> Track:
    height, width = size
    area = rng.uniform(*area_range) * height * width
    radius = min(math.sqrt(area / (math.pi * SHAPE_FILL[look.shape])), 0.5 * min(height, width))
    speed = MAX_SPEED_FRACTION * min(height, width)
    return Track(class_index=class_index, radius=radius,
                 x0=rng.uniform(0, width), y0=rng.uniform(0, height),
                 vx=rng.uniform(-speed, speed), vy=rng.uniform(-speed, speed),
                 angle0=rng.uniform(0, 2 * math.pi), spin=rng.uniform(-0.15, 0.15),
                 growth=rng.uniform(-0.03, 0.03), present=[True] * frames)


def _contiguous_presence(rng: np.random.Generator, frames: int, minimum: int = 2) -> list[bool]:
    length = int(rng.integers(min(minimum, frames), frames + 1))
    start = int(rng.integers(0, frames - length + 1))
    return [start <= t < start + length for t in range(frames)]


def _plan_video(rng: np.random.Generator, class_index: int, num_classes: int, size: tuple[int, int],
                frames: int, looks: Sequence[ClassLook]) -> list[Track]:
    """Tracks of one video in paint order: its class once or twice, maybe a distractor."""
    tracks = [_new_track(rng, class_index, looks[class_index], size, PRIMARY_AREA, frames)]
    if frames > 2 and rng.random() < DROP_FRAME_PROBABILITY:
        tracks[0].present[int(rng.integers(1, frames))] = False
    if rng.random() < SECOND_INSTANCE_PROBABILITY:
        second = _new_track(rng, class_index, looks[class_index], size, DISTRACTOR_AREA, frames)
        second.present = _contiguous_presence(rng, frames)
        tracks.append(second)
    if num_classes > 1 and rng.random() < DISTRACTOR_PROBABILITY:
        other = int((class_index + rng.integers(1, num_classes)) % num_classes)
        distractor = _new_track(rng, other, looks[other], size, DISTRACTOR_AREA, frames)
        distractor.present = _contiguous_presence(rng, frames)
        tracks.append(distractor)
    order = rng.permutation(len(tracks))
    return [tracks[i] for i in order]


def _render_frame(tracks: Sequence[Track], looks: Sequence[ClassLook], t: int,
                  background: np.ndarray, pan: tuple[int, int], size: tuple[int, int],
                  grid, brightness: float):
    """Image ``uint8 [h,w,3]`` and the visible mask of each present track (None if absent)."""
    height, width = size
    image = background[pan[0]:pan[0] + height, pan[1]:pan[1] + width].copy()
    shapes = []
    for track in tracks:
        if not track.present[t]:
            shapes.append(None)
            continue
        cx, cy, radius, angle = track.pose(t, size)
        shapes.append((shape_mask(looks[track.class_index].shape, size, cx, cy, radius, angle),
                       cx, cy, angle, radius))
    visible: list[np.ndarray | None] = [None] * len(tracks)
    covered = np.zeros(size, dtype=bool)
    for i in range(len(tracks) - 1, -1, -1):      # later tracks are painted on top
        if shapes[i] is not None:
            visible[i] = shapes[i][0] & ~covered
            covered |= shapes[i][0]
    period = max(3.0, min(height, width) / 16.0)
    for track, shape in zip(tracks, shapes):
        if shape is None:
            continue
        mask, cx, cy, angle, radius = shape
        # paint inside the shape's bounding box only
        y0, y1 = max(0, int(cy - radius) - 1), min(height, int(cy + radius) + 2)
        x0, x1 = max(0, int(cx - radius) - 1), min(width, int(cx + radius) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        box = (slice(y0, y1), slice(x0, x1))
        look = looks[track.class_index]
        inside = mask[box]
        second = texture_pattern(look, (grid[0][box], grid[1][box]), cx, cy, angle, period) & inside
        patch = image[box]
        patch[inside] = np.asarray(look.colour, dtype=np.float32) * brightness
        patch[second] = np.asarray(look.second, dtype=np.float32) * brightness
    return np.clip(image, 0, 255).astype(np.uint8), visible


# ----------------------------------------------------------------------------- encodings
def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a 0/1 mask: column-major run lengths, starting with zeros."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(s) for s in rle["size"]]}


def polygon_segmentation(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a mask as COCO polygons (holes are not representable)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def encode_segmentation(mask: np.ndarray, encoding: str):
    """``(segmentation, annotated mask)``: the JSON value and the mask it decodes to."""
    if encoding == "polygon":
        polygons = polygon_segmentation(mask)
        if polygons:
            height, width = mask.shape
            decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
            return polygons, decoded.astype(bool)
        encoding = "rle_compressed"   # nothing to outline: fall back to RLE
    if encoding == "rle_uncompressed":
        return uncompressed_rle(mask), mask.astype(bool)
    return compressed_rle(mask), mask.astype(bool)


# ----------------------------------------------------------------------------- tree handling
def _prepare_root(root: str, params: dict, overwrite: bool) -> str | None:
    """Return a fresh staging folder, or None when ``root`` already holds these parameters."""
    marker = os.path.join(root, MARKER_FILE)
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        existing = None
        if os.path.isfile(marker):
            try:
                with open(marker) as handle:
                    existing = json.load(handle)
            except (OSError, ValueError):
                existing = None
        if existing == params:
            logger.info("%s already holds this synthetic dataset; nothing to write", root)
            return None
        if existing is None:
            raise DatasetError(f"{root} exists and is not a synthetic dataset written by "
                               f"dataset.synthetic; choose an empty or new folder")
        if not overwrite:
            raise DatasetError(f"{root} holds a synthetic dataset written with other parameters "
                               f"({existing}); pass overwrite=True (--overwrite) or another folder")
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(root))}.writing-{os.getpid()}")
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    return staging


def _commit_root(staging: str, root: str, params: dict) -> None:
    atomic_write_json(os.path.join(staging, MARKER_FILE), params, indent=1)
    if os.path.exists(root):
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        else:
            shutil.rmtree(root)  # only reached for a marked synthetic dataset (see _prepare_root)
    os.replace(staging, root)


@contextlib.contextmanager
def _staged_tree(staging: str, root: str, params: dict):
    """Build the tree in ``staging``; on success move it to ``root``, on any failure delete it."""
    try:
        yield
        _commit_root(staging, root, params)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_jpeg(path: str, image_rgb: np.ndarray) -> None:
    ok, payload = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"cannot encode {path} as JPEG")
    with open(path, "wb") as handle:
        handle.write(payload.tobytes())


def _write_png(path: str, labels: np.ndarray) -> None:
    ok, payload = cv2.imencode(".png", labels.astype(np.uint8))
    if not ok:
        raise DatasetError(f"cannot encode {path} as PNG")
    with open(path, "wb") as handle:
        handle.write(payload.tobytes())


def _check_size(frame_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in frame_size)
    except (TypeError, ValueError):
        raise DatasetError(f"frame_size must be (height, width), got {frame_size!r}") from None
    if height < 16 or width < 16:
        raise DatasetError(f"frame_size {height}x{width} is too small (at least 16x16)")
    return height, width


def _video_name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        name = f"{int(rng.integers(16 ** 10)):010x}"
        if name not in used:
            used.add(name)
            return name


def _grid(size: tuple[int, int]):
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    return ys.astype(np.float32), xs.astype(np.float32)


# ----------------------------------------------------------------------------- YouTube-VIS
def write_synthetic_youtube_vis(root: str, seed: int = 0, *, videos_per_class: int = 8,
                                frames_per_video: int = 7, frame_size: Sequence[int] = (120, 216),
                                num_categories: int = 40, portrait_videos: int = 0,
                                overwrite: bool = False) -> str:
    """Write a small YouTube-VIS 2019 tree under ``root``; return ``root``.

    ``videos_per_class`` videos have each category as their main class (so with the default 8
    a test query has 7 other videos to draw its 5 supports from); each video has
    ``frames_per_video`` frames of ``frame_size`` (H, W). ``portrait_videos`` of the videos
    (the first ones written) are rendered with H and W swapped.
    """
    size = _check_size(frame_size)
    for name, value, low in (("videos_per_class", videos_per_class, 1),
                             ("frames_per_video", frames_per_video, 1),
                             ("num_categories", num_categories, 1), ("portrait_videos", portrait_videos, 0)):
        if int(value) < low:
            raise DatasetError(f"{name} must be >= {low}, got {value}")
    params = {"format": "youtube_vis_2019", "seed": int(seed), "videos_per_class": int(videos_per_class),
              "frames_per_video": int(frames_per_video), "frame_size": list(size),
              "num_categories": int(num_categories), "portrait_videos": int(portrait_videos)}
    staging = _prepare_root(root, params, overwrite)
    if staging is None:
        return root
    start = time.perf_counter()
    with _staged_tree(staging, root, params):
        rng = np.random.default_rng(seed)
        looks = [class_look(i) for i in range(num_categories)]
        frames_dir = os.path.join(staging, "train", "JPEGImages")
        os.makedirs(frames_dir)
        encodings = list(ENCODING_WEIGHTS)
        weights = np.array(list(ENCODING_WEIGHTS.values()))
        videos, annotations, used_names = [], [], set()
        grids = {}
        jobs = [(c, v) for c in range(num_categories) for v in range(videos_per_class)]
        for number, (class_index, _) in enumerate(jobs):
            video_size = (size[1], size[0]) if number < portrait_videos else size
            grid = grids.setdefault(video_size, _grid(video_size))
            name = _video_name(rng, used_names)
            os.makedirs(os.path.join(frames_dir, name))
            tracks = _plan_video(rng, class_index, num_categories, video_size, frames_per_video, looks)
            pad = BACKGROUND_PAN_PX * frames_per_video
            background = render_background(rng, video_size, pad)
            pan_step = rng.integers(-BACKGROUND_PAN_PX, BACKGROUND_PAN_PX + 1, size=2)
            brightness = rng.uniform(0.92, 1.08)
            segmentations = [[] for _ in tracks]
            file_names = []
            for t in range(frames_per_video):
                pan = (int(pad + pan_step[0] * t), int(pad + pan_step[1] * t))
                image, visible = _render_frame(tracks, looks, t, background, pan, video_size, grid,
                                               brightness)
                for i, mask in enumerate(visible):
                    if mask is None:
                        segmentations[i].append(None)
                        continue
                    encoding = encodings[int(rng.choice(len(encodings), p=weights))]
                    segmentation, annotated = encode_segmentation(mask, encoding)
                    segmentations[i].append((segmentation, annotated))
                file_name = f"{name}/{FRAME_STEP * t:05d}.jpg"
                _write_jpeg(os.path.join(frames_dir, file_name), image)
                file_names.append(file_name)
            video_id = len(videos) + 1
            videos.append({"id": video_id, "width": video_size[1], "height": video_size[0],
                           "length": frames_per_video, "file_names": file_names})
            for track, per_frame in zip(tracks, segmentations):
                annotations.append(_annotation(len(annotations) + 1, video_id, track.class_index + 1,
                                               video_size, per_frame))
        categories = [{"id": i + 1, "name": f"{looks[i].texture}_{looks[i].shape}_{i + 1:02d}",
                       "supercategory": looks[i].shape} for i in range(num_categories)]
        data = {"info": {"description": "synthetic YouTube-VIS 2019 style dataset (dataset.synthetic)",
                         "seed": int(seed)},
                "licenses": [], "videos": videos, "annotations": annotations, "categories": categories}
        atomic_write_json(os.path.join(staging, "train", "train.json"), data, indent=None)
    logger.info("wrote synthetic YouTube-VIS dataset %s (%d videos) in %.1f s", root, len(videos),
                time.perf_counter() - start)
    return root


def _annotation(ann_id: int, video_id: int, category_id: int, size: tuple[int, int], per_frame) -> dict:
    segs, areas, boxes = [], [], []
    for entry in per_frame:
        if entry is None:
            segs.append(None)
            areas.append(None)
            boxes.append(None)
            continue
        segmentation, annotated = entry
        segs.append(segmentation)
        areas.append(int(annotated.sum()))
        rows, cols = np.flatnonzero(annotated.any(axis=1)), np.flatnonzero(annotated.any(axis=0))
        boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
                      float(rows[-1] - rows[0] + 1)] if len(rows) else None)
    return {"id": ann_id, "video_id": video_id, "category_id": category_id, "iscrowd": 0,
            "height": size[0], "width": size[1], "length": len(per_frame),
            "segmentations": segs, "areas": areas, "bboxes": boxes}


# ----------------------------------------------------------------------------- VSPW
def write_synthetic_vspw(root: str, seed: int = 0, *, val_videos_per_class: int = 6,
                         train_videos_per_class: int = 3, frames_per_video: int = 6,
                         frame_size: Sequence[int] = (120, 216), write_lists: bool = True,
                         overwrite: bool = False) -> str:
    """Write a small VSPW 480p tree under ``root`` (and the MiniVSPW lists); return ``root``.

    Each of the 25 MiniVSPW classes (VSPW ids of the TTI split) is the main class of
    ``train_videos_per_class`` videos of VSPW's train split and ``val_videos_per_class`` of its
    val split. Masks hold VSPW class ids (0 = others, stuff ids for the background bands).
    """
    size = _check_size(frame_size)
    for name, value in (("val_videos_per_class", val_videos_per_class),
                        ("train_videos_per_class", train_videos_per_class),
                        ("frames_per_video", frames_per_video)):
        if int(value) < 1:
            raise DatasetError(f"{name} must be >= 1, got {value}")
    params = {"format": "vspw_480p", "seed": int(seed), "val_videos_per_class": int(val_videos_per_class),
              "train_videos_per_class": int(train_videos_per_class),
              "frames_per_video": int(frames_per_video), "frame_size": list(size),
              "write_lists": bool(write_lists)}
    staging = _prepare_root(root, params, overwrite)
    if staging is None:
        return root
    start = time.perf_counter()
    with _staged_tree(staging, root, params):
        rng = np.random.default_rng(seed)
        class_ids = sorted(VSPW_CLASS_NAMES)
        looks = [class_look(i) for i in range(len(class_ids))]
        stuff_ids = [i for i in sorted(VSPW_STUFF_NAMES) if i != 0]
        grid = _grid(size)
        splits: dict[str, list[str]] = {"train": [], "val": []}
        jobs = [(split, c) for split, count in (("train", train_videos_per_class), ("val", val_videos_per_class))
                for c in range(len(class_ids)) for _ in range(count)]
        for number, (split, class_index) in enumerate(jobs):
            name = f"{number:04d}_{int(rng.integers(16 ** 6)):06x}"
            splits[split].append(name)
            origin = os.path.join(staging, "data", name, "origin")
            mask_dir = os.path.join(staging, "data", name, "mask")
            os.makedirs(origin)
            os.makedirs(mask_dir)
            tracks = _plan_video(rng, class_index, len(class_ids), size, frames_per_video, looks)
            pad = BACKGROUND_PAN_PX * frames_per_video
            background = render_background(rng, size, pad)
            horizon = int(rng.integers(size[0] // 4, 3 * size[0] // 4))
            top_id, bottom_id = (int(i) for i in rng.choice(stuff_ids, 2, replace=False))
            pan_step = rng.integers(-BACKGROUND_PAN_PX, BACKGROUND_PAN_PX + 1, size=2)
            brightness = rng.uniform(0.92, 1.08)
            for t in range(frames_per_video):
                pan = (int(pad + pan_step[0] * t), int(pad + pan_step[1] * t))
                image, visible = _render_frame(tracks, looks, t, background, pan, size, grid, brightness)
                labels = np.full(size, bottom_id, dtype=np.uint8)
                labels[:horizon] = top_id
                for track, mask in zip(tracks, visible):
                    if mask is not None:
                        labels[mask] = class_ids[track.class_index]
                stem = f"{t:08d}"
                _write_jpeg(os.path.join(origin, stem + ".jpg"), image)
                _write_png(os.path.join(mask_dir, stem + ".png"), labels)
        for split, names in splits.items():
            atomic_write_text(os.path.join(staging, f"{split}.txt"), "".join(n + "\n" for n in names))
        atomic_write_text(os.path.join(staging, "test.txt"), "")
        label_names = {f"synthetic_{i}": i for i in range(VSPW_NUM_IDS)}
        for ids in (VSPW_STUFF_NAMES, VSPW_CLASS_NAMES):
            for class_id, class_name in ids.items():
                label_names.pop(f"synthetic_{class_id}", None)
                label_names[class_name] = class_id
        ordered = dict(sorted(label_names.items(), key=lambda item: item[1]))
        atomic_write_json(os.path.join(staging, "label_num_dic_final.json"), ordered, indent=1)
        if write_lists:
            from .minivspw_lists import generate_lists
            generate_lists(staging, workers=1, show_progress=False)
    logger.info("wrote synthetic VSPW dataset %s (%d videos) in %.1f s", root, len(jobs),
                time.perf_counter() - start)
    return root


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.synthetic",
        description="Write a small synthetic dataset in the YouTube-VIS 2019 or VSPW 480p format.")
    parser.add_argument("format", choices=("youtube_vis", "vspw"))
    parser.add_argument("--root", required=True, help="output folder (created; must be new, empty or "
                                                      "a synthetic dataset written before)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos-per-class", type=int, default=None,
                        help="youtube_vis: videos per category (default 8); "
                             "vspw: val-split videos per class (default 6)")
    parser.add_argument("--train-videos-per-class", type=int, default=3, help="vspw only (default 3)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per video (default 7 for youtube_vis, 6 for vspw)")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=216)
    parser.add_argument("--portrait-videos", type=int, default=0, help="youtube_vis only")
    parser.add_argument("--no-lists", action="store_true", help="vspw: do not write the MiniVSPW lists")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic dataset written with other parameters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        start = time.perf_counter()
        if args.format == "youtube_vis":
            write_synthetic_youtube_vis(
                args.root, args.seed, videos_per_class=args.videos_per_class or 8,
                frames_per_video=args.frames or 7, frame_size=(args.height, args.width),
                portrait_videos=args.portrait_videos, overwrite=args.overwrite)
        else:
            write_synthetic_vspw(
                args.root, args.seed, val_videos_per_class=args.videos_per_class or 6,
                train_videos_per_class=args.train_videos_per_class, frames_per_video=args.frames or 6,
                frame_size=(args.height, args.width), write_lists=not args.no_lists,
                overwrite=args.overwrite)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.format} dataset ready in {args.root} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
