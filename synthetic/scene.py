"""Synthetic scenes: class looks, moving object tracks, backgrounds and rendered frames.

Every class has its own look: a shape (8 kinds) x a two-colour texture (5 kinds) and a hue of
its own, strongly saturated over desaturated, smoothly textured backgrounds that pan slowly.
Objects are large (10-30 % of the frame), move, rotate and change size; videos hold one or two
instances of their class and often an instance of another class (a distractor that may
occlude); some instances are absent in some frames.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

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
MAX_SPEED_FRACTION = 0.06         # per frame, of the frame's smaller side
BACKGROUND_PAN_PX = 2


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


def plan_video(rng: np.random.Generator, class_index: int, num_classes: int, size: tuple[int, int],
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


def render_frame(tracks: Sequence[Track], looks: Sequence[ClassLook], t: int,
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



def pixel_grid(size: tuple[int, int]):
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    return ys.astype(np.float32), xs.astype(np.float32)

