"""Episode transforms (docs/protocol.md, "Transforms and the letterbox"): training augmentation, letterbox resize, normalisation.

Both transforms take one *list* of frames (the query frames of an episode, or its support
frames) and return stacked tensors:

* frames: list of ``uint8`` RGB arrays ``[h, w, 3]`` (sizes may differ between frames),
* masks:  list of ``uint8`` 0/1 arrays ``[h, w]`` of the matching frame's size,
* returns ``images`` float32 ``[T, 3, H, W]`` (ImageNet-normalised) and ``masks`` float32
  ``[T, 1, H, W]`` holding 0/1.

Faithful quirks kept on purpose (they define the masks training and evaluation see):

* masks are letterboxed with **bilinear** interpolation and then truncated to ``uint8``, so a
  pixel is object only where the resized value is exactly 1.0 (masks lose a thin rim);
* training: if the first frame is portrait (``h >= w``) every frame is transposed; every frame
  *except the first* gets one shared random crop + affine; one contrast factor and one additive
  noise value for the whole list; the whole list is flipped with probability 0.5.

* the letterbox size and offset of a whole list come from its **first** frame: every frame of
  the list is resized to them, so a frame of another aspect ratio is stretched (support sets mix
  videos of several sizes).

``letterbox_per_frame=True`` (config key ``letterbox_per_frame``) letterboxes each frame with its
own size instead: a deliberate deviation from the authors that changes the inputs (and results)
whenever a list mixes frame sizes; for lists of one size both rules give the same output.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import imgaug.augmenters as iaa
import numpy as np
import torch
from einops import rearrange
from imgaug.augmentables.segmaps import SegmentationMapsOnImage

from config import DEFAULTS, check_image_size
from utils.visualize import IMAGENET_MEAN, IMAGENET_STD     # the one home of the normalisation statistics

from .errors import DatasetError

PIXEL_MAX = 255.0

CROP_PERCENT = (0.0, 0.1)
AFFINE_SCALE = (0.95, 1.05)
AFFINE_SHEAR_DEG = (-10.0, 10.0)
AFFINE_ROTATE_DEG = (-15.0, 15.0)
CONTRAST_RANGE = (0.97, 1.03)
NOISE_DELTA = 5.0
FLIP_PROBABILITY = 0.5
IMGAUG_SEED_BOUND = 2**31 - 1

def letterbox_geometry(height: int, width: int, out_height: int, out_width: int):
    """Size and offset of a ``height x width`` frame letterboxed into ``out_height x out_width``.

    Returns ``(new_height, new_width, top, left)`` with ``f = min(out_h/h, out_w/w)``,
    ``new = int(f * side)`` and the offset centring it on the canvas.
    """
    factor = min(out_height / height, out_width / width)
    new_height, new_width = int(factor * height), int(factor * width)
    return new_height, new_width, (out_height - new_height) // 2, (out_width - new_width) // 2


def _letterbox_geometry_of(shape: Sequence[int], out_size: tuple[int, int],
                           source_size: Sequence[int] | None):
    """Geometry of ``source_size`` (default: the array's own ``shape[:2]``) in ``out_size``."""
    height, width = shape[:2] if source_size is None else source_size
    return letterbox_geometry(int(height), int(width), *out_size)


def letterbox_image(image: np.ndarray, out_size: tuple[int, int],
                    source_size: Sequence[int] | None = None) -> np.ndarray:
    """Bilinear letterbox of a float image ``[h, w, 3]`` onto a zero canvas ``[H, W, 3]``.

    ``source_size`` ``(h0, w0)``: take the size and offset a ``h0 x w0`` frame would get (the
    image is stretched to them when its aspect ratio differs); default: the image's own size.
    """
    out_height, out_width = out_size
    new_height, new_width, top, left = _letterbox_geometry_of(image.shape, out_size, source_size)
    canvas = np.zeros((out_height, out_width, 3), dtype=np.float32)
    canvas[top:top + new_height, left:left + new_width] = cv2.resize(
        image.astype(np.float32, copy=False), (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    return canvas


def letterbox_mask(mask: np.ndarray, out_size: tuple[int, int],
                   source_size: Sequence[int] | None = None) -> np.ndarray:
    """Letterbox a 0/1 mask ``[h, w]`` to ``uint8 [H, W]``: bilinear, then truncated.

    Only pixels whose resized value is exactly 1.0 stay object (docs/protocol.md).
    ``source_size`` as in :func:`letterbox_image`.
    """
    out_height, out_width = out_size
    new_height, new_width, top, left = _letterbox_geometry_of(mask.shape, out_size, source_size)
    canvas = np.zeros((out_height, out_width), dtype=np.float32)
    canvas[top:top + new_height, left:left + new_width] = cv2.resize(
        mask.astype(np.float32), (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    return canvas.astype(np.uint8)


def normalise(image: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` with the ImageNet mean and std, on ``[..., 3]`` float arrays."""
    return ((image / PIXEL_MAX - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _check_lists(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
    if len(frames) == 0 or len(frames) != len(masks):
        raise DatasetError(f"transform needs as many masks as frames (>= 1), got "
                           f"{len(frames)} frames and {len(masks)} masks")
    for index, (frame, mask) in enumerate(zip(frames, masks)):
        if frame.ndim != 3 or frame.shape[2] != 3 or mask.shape[:2] != frame.shape[:2]:
            raise DatasetError(f"frame {index}: expected an RGB frame [h, w, 3] and a mask [h, w] of "
                               f"the same size, got {frame.shape} and {mask.shape}")


def _finish(images: list[np.ndarray], masks: list[np.ndarray], out_size: tuple[int, int], per_frame: bool):
    """Letterbox + normalise + stack: float images, masks in -> ([T,3,H,W], [T,1,H,W]).

    The letterbox geometry is the first frame's for the whole list unless ``per_frame``."""
    source = None if per_frame else images[0].shape[:2]
    image_stack = np.stack([normalise(letterbox_image(img, out_size, source)) for img in images])
    mask_stack = np.stack([letterbox_mask(m, out_size, source) for m in masks])
    image_tensor = torch.from_numpy(rearrange(image_stack, "t h w c -> t c h w").copy())
    mask_tensor = torch.from_numpy(rearrange(mask_stack, "t h w -> t 1 h w").copy()).float()
    return image_tensor, mask_tensor


class TestTransform:
    """Letterbox + normalise only (no transpose, no randomness).

    ``letterbox_per_frame``: letterbox each frame with its own size instead of the list's first
    frame's (a deviation from the authors, see the module docstring).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, image_size: Sequence[int] = tuple(DEFAULTS.image_size), letterbox_per_frame: bool = False):
        self.image_size = check_image_size(image_size, error=DatasetError)
        self.letterbox_per_frame = bool(letterbox_per_frame)

    def __call__(self, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 rng: np.random.Generator | None = None):
        """frames ``uint8 [h,w,3]`` + masks ``[h,w]`` -> ``([T,3,H,W], [T,1,H,W])``; ``rng`` unused."""
        _check_lists(frames, masks)
        images = [np.asarray(f, dtype=np.float32) for f in frames]
        return _finish(images, [np.asarray(m) for m in masks], self.image_size, self.letterbox_per_frame)


class TrainTransform:
    """The training augmentation of docs/protocol.md; every random draw comes from ``rng``.

    Order: transpose (if the first frame is portrait), shared crop + affine on frames 1..T-1
    (imgaug, masks as segmentation maps), float, contrast, additive noise, horizontal flip,
    letterbox (with the first frame's geometry, as it is after the transpose; per frame if
    ``letterbox_per_frame``), normalise.
    """

    def __init__(self, image_size: Sequence[int] = tuple(DEFAULTS.image_size), letterbox_per_frame: bool = False):
        self.image_size = check_image_size(image_size, error=DatasetError)
        self.letterbox_per_frame = bool(letterbox_per_frame)

    @staticmethod
    def _geometric_augmenter(seed: int) -> iaa.Augmenter:
        sequence = iaa.Sequential([
            iaa.Crop(percent=CROP_PERCENT, keep_size=True),
            iaa.Affine(scale=AFFINE_SCALE, shear=AFFINE_SHEAR_DEG, rotate=AFFINE_ROTATE_DEG),
        ])
        sequence.seed_(seed)  # re-seeds the children too (their default state is global)
        return sequence.to_deterministic()

    def __call__(self, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 rng: np.random.Generator):
        """frames ``uint8 [h,w,3]`` + masks ``[h,w]`` -> ``([T,3,H,W], [T,1,H,W])``."""
        _check_lists(frames, masks)
        images = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
        labels = [np.ascontiguousarray(m, dtype=np.uint8)[:, :, None] for m in masks]

        first_height, first_width = images[0].shape[:2]
        if first_height >= first_width:
            images = [np.ascontiguousarray(img.transpose(1, 0, 2)) for img in images]
            labels = [np.ascontiguousarray(lab.transpose(1, 0, 2)) for lab in labels]

        augmenter = self._geometric_augmenter(int(rng.integers(IMGAUG_SEED_BOUND)))
        for index in range(1, len(images)):
            segmap = SegmentationMapsOnImage(labels[index], shape=images[index].shape)
            images[index], segmap = augmenter(image=images[index], segmentation_maps=segmap)
            labels[index] = segmap.get_arr()

        float_images = [img.astype(np.float32) for img in images]
        float_masks = [lab[:, :, 0].astype(np.float32) for lab in labels]
        contrast = rng.uniform(*CONTRAST_RANGE)
        noise = rng.uniform(-NOISE_DELTA, NOISE_DELTA)
        float_images = [img * contrast + noise for img in float_images]
        if rng.random() < FLIP_PROBABILITY:
            float_images = [img[:, ::-1] for img in float_images]
            float_masks = [m[:, ::-1] for m in float_masks]
        return _finish(float_images, float_masks, self.image_size, self.letterbox_per_frame)
