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
import imgaug as ia
import imgaug.augmenters as iaa
import imgaug.augmenters.size as imgaug_size
import numpy as np
import torch
from einops import rearrange

from config import DEFAULTS, check_image_size
from utils.visualize import IMAGENET_MEAN, IMAGENET_STD     # the one home of the normalisation statistics

from .errors import DatasetError

PIXEL_MAX = 255.0
_CHANNEL_MEAN = torch.from_numpy(IMAGENET_MEAN).view(3, 1, 1)
_CHANNEL_STD = torch.from_numpy(IMAGENET_STD).view(3, 1, 1)

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
                    source_size: Sequence[int] | None = None, contrast: float = 1.0,
                    noise: float = 0.0) -> np.ndarray:
    """Bilinear letterbox of an image ``[h, w, 3]`` (resized in float32) onto a zero canvas ``[H, W, 3]``.

    ``source_size`` ``(h0, w0)``: take the size and offset a ``h0 x w0`` frame would get (the
    image is stretched to them when its aspect ratio differs); default: the image's own size.
    ``contrast`` / ``noise``: ``x * contrast + noise`` on the resized image (the padding stays 0).
    """
    out_height, out_width = out_size
    new_height, new_width, top, left = _letterbox_geometry_of(image.shape, out_size, source_size)
    canvas = np.zeros((out_height, out_width, 3), dtype=np.float32)
    inside = canvas[top:top + new_height, left:left + new_width]
    inside[...] = cv2.resize(image.astype(np.float32, copy=False), (new_width, new_height),
                             interpolation=cv2.INTER_LINEAR)
    if contrast != 1.0 or noise != 0.0:
        inside *= np.float32(contrast)
        inside += np.float32(noise)
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


def _finish(images: list[np.ndarray], masks: list[np.ndarray], out_size: tuple[int, int], per_frame: bool,
            contrast: float = 1.0, noise: float = 0.0):
    """Letterbox + normalise + stack: images ``[h,w,3]``, masks ``[h,w]`` -> ([T,3,H,W], [T,1,H,W]).

    The letterbox geometry is the first frame's for the whole list unless ``per_frame``;
    ``x * contrast + noise`` is applied to the resized frames, inside the letterbox."""
    source = None if per_frame else images[0].shape[:2]
    image_stack = np.stack([letterbox_image(img, out_size, source, contrast, noise) for img in images])
    mask_stack = np.stack([letterbox_mask(m, out_size, source) for m in masks])
    # normalise() channel-first: per-channel constants then act on long contiguous rows
    image_tensor = torch.from_numpy(rearrange(image_stack, "t h w c -> t c h w").copy())
    image_tensor.div_(PIXEL_MAX).sub_(_CHANNEL_MEAN).div_(_CHANNEL_STD)
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
        return _finish([np.asarray(f) for f in frames], [np.asarray(m) for m in masks], self.image_size,
                       self.letterbox_per_frame)


class ImgaugGeometry:
    """The authors' shared crop + affine (imgaug, one seed per list), applied to a frame and its mask.

    The same random draw as ``iaa.Sequential([Crop, Affine]).to_deterministic()`` called with
    ``image=`` and ``segmentation_maps=`` (the authors' call), and the same imgaug operations:
    each frame's crop and affine parameters are drawn once from the deterministic children and
    applied by imgaug to the image (crop, cubic resize back, bilinear warp) and to the 0/1
    ``uint8`` mask (nearest-neighbour resize and warp, zero fill), without the segmentation-map
    container, which costs more than the image at 1280x720 (an ``int32`` copy of the mask,
    validation and conversions). tests/test_transform_regression.py checks the equality with
    imgaug's own segmentation-map path.
    """

    def __init__(self, seed: int):
        sequence = iaa.Sequential([
            iaa.Crop(percent=CROP_PERCENT, keep_size=True),
            iaa.Affine(scale=AFFINE_SCALE, shear=AFFINE_SHEAR_DEG, rotate=AFFINE_ROTATE_DEG),
        ])
        sequence.seed_(seed)  # re-seeds the children too (their default state is global)
        self.sequence = sequence.to_deterministic()
        self.crop, self.affine = self.sequence[0], self.sequence[1]
        self._draws: dict = {}          # (h, w) -> (crop, affine) sampling results
        self._matrices: dict = {}       # (h, w) -> matrix()

    def _draw(self, shape: Sequence[int]):
        """This list's crop and affine draws for a frame of ``shape`` (imgaug sampling results).

        A deterministic augmenter restores its generator after every call: draws from a copy of
        it are the draws of the call, the same for every frame of the list of one size (kept).
        """
        key = tuple(shape[:2])
        if key not in self._draws:
            self._draws[key] = (self.crop._draw_samples(self.crop.random_state.copy(), [(*key, 3)]),
                                self.affine._draw_samples(1, self.affine.random_state.copy()))
        return self._draws[key]

    def crop_box(self, crop, height: int, width: int) -> tuple[int, int, int, int]:
        """``(x1, y1, x2, y2)`` of the crop imgaug cuts from a ``height x width`` frame."""
        return imgaug_size._crop_trbl_to_xyxy(  # noqa: SLF001 - imgaug's own crop rule
            (height, width), *imgaug_size._crop_prevent_zero_size(height, width, *crop[0].croppings))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 [h, w, 3]`` frame + ``uint8 [h, w]`` mask -> both warped (same sizes)."""
        height, width = image.shape[:2]
        crop, affine = self._draw(image.shape)
        image = self.crop._augment_images_by_samples([image], crop)[0]
        x1, y1, x2, y2 = self.crop_box(crop, height, width)
        mask = ia.imresize_single_image(mask[y1:y2, x1:x2, None], (height, width), interpolation="nearest")

        image = self.affine._augment_images_by_samples([image], affine)[0]
        affine = affine.copy()
        affine.cval = np.zeros((1, 1), dtype=np.int32)         # segmentation maps: zero fill,
        affine.mode = [self.affine._mode_segmentation_maps]    # constant mode,
        affine.order = [self.affine._order_segmentation_maps]  # nearest neighbour
        mask = self.affine._augment_images_by_samples([mask], affine, image_shapes=[image.shape])[0]
        return image, mask.reshape(height, width)

    def matrix(self, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The crop box ``(x1, y1, x2, y2)`` of a ``height x width`` frame and the ``[3, 3]`` map
        from the crop's own pixel coordinates to where the resize back to the frame size and the
        affine put them (pixel centres at integers). Outside the box there is nothing: the
        affine's fill shows there, as in imgaug's order."""
        if (height, width) not in self._matrices:
            crop, affine = self._draw((height, width))
            x1, y1, x2, y2 = self.crop_box(crop, height, width)
            # the crop resized back, cv2.resize's convention: dst = (src + 0.5) * w / (x2 - x1) - 0.5
            resize = _pixel_scale(width / (x2 - x1), height / (y2 - y1))
            shape = (height, width, 3)
            self._matrices[(height, width)] = (affine.to_matrix(0, shape, shape, False)[0].params @ resize,
                                               (x1, y1, x2, y2))
        return self._matrices[(height, width)]


def list_draws(rng: np.random.Generator) -> tuple[ImgaugGeometry, float, float, bool]:
    """One list's random draws, in the authors' order: the crop + affine (an imgaug seed), the
    contrast factor, the additive noise, the horizontal flip."""
    geometry = ImgaugGeometry(int(rng.integers(IMGAUG_SEED_BOUND)))
    contrast = rng.uniform(*CONTRAST_RANGE)
    noise = rng.uniform(-NOISE_DELTA, NOISE_DELTA)
    return geometry, contrast, noise, bool(rng.random() < FLIP_PROBABILITY)


class TrainTransform:
    """The training augmentation of docs/protocol.md; every random draw comes from ``rng``.

    Order: transpose (if the first frame is portrait), shared crop + affine on frames 1..T-1
    (imgaug, masks as segmentation maps), float, contrast, additive noise, horizontal flip,
    letterbox (with the first frame's geometry, as it is after the transpose; per frame if
    ``letterbox_per_frame``), normalise.

    The arithmetic is the authors' in a cheaper order with the same outputs (to float rounding,
    tests/fixtures/regression/): the transpose and flip move ``uint8`` pixels; contrast and noise
    (``x * c + n``) commute with the bilinear letterbox resize (its weights sum to 1), so they are
    applied to the resized frame at the output size, inside the letterbox (the zero padding is not
    touched, as in the authors' order).
    """

    def __init__(self, image_size: Sequence[int] = tuple(DEFAULTS.image_size), letterbox_per_frame: bool = False):
        self.image_size = check_image_size(image_size, error=DatasetError)
        self.letterbox_per_frame = bool(letterbox_per_frame)

    def __call__(self, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 rng: np.random.Generator):
        """frames ``uint8 [h,w,3]`` + masks ``[h,w]`` -> ``([T,3,H,W], [T,1,H,W])``."""
        _check_lists(frames, masks)
        images = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
        labels = [np.ascontiguousarray(m, dtype=np.uint8) for m in masks]

        first_height, first_width = images[0].shape[:2]
        if first_height >= first_width:
            images = [cv2.transpose(img) for img in images]
            labels = [cv2.transpose(lab) for lab in labels]

        geometry, contrast, noise, flip = list_draws(rng)
        for index in range(1, len(images)):
            images[index], labels[index] = geometry(images[index], labels[index])
        if flip:
            images = [cv2.flip(img, 1) for img in images]
            labels = [cv2.flip(lab, 1) for lab in labels]
        return _finish(images, labels, self.image_size, self.letterbox_per_frame, contrast=contrast, noise=noise)


class FastTrainTransform(TrainTransform):
    """``fast_augment=true``: the training augmentation as one warp per frame, at the output size.

    A deliberate deviation from the authors (opt-in, config key ``fast_augment``): the same random
    draws as :class:`TrainTransform` (the list's imgaug crop and affine, contrast, noise, flip, in
    the same order from ``rng``), but the transpose, crop (resized back), affine, flip and
    letterbox of a frame are composed into one affine map and applied by a single bilinear
    ``cv2.warpAffine`` from the ``uint8`` frame straight into the letterbox (no full-size
    intermediate, no cubic resize, no nearest-neighbour mask steps); contrast, noise and the
    normalisation work on the output. Masks: one bilinear warp of the 0/1 mask (as 0/255),
    object where the result is 255 (the letterbox's "exactly 1.0" truncation). Outputs differ
    from the default by resampling (one interpolation instead of three); docs/speed.md "fast_augment"
    compares their distributions.
    """

    def __call__(self, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 rng: np.random.Generator):
        """frames ``uint8 [h,w,3]`` + masks ``[h,w]`` -> ``([T,3,H,W], [T,1,H,W])``."""
        _check_lists(frames, masks)
        portrait = frames[0].shape[0] >= frames[0].shape[1]
        geometry, contrast, noise, flip = list_draws(rng)
        contrast, noise = np.float32(contrast), np.float32(noise)

        # contrast, noise and the normalisation in one multiply-add: ((x c + n) / 255 - mean) / std
        scale = torch.from_numpy(contrast / np.float32(PIXEL_MAX) / IMAGENET_STD).view(1, 3, 1, 1)
        offset = torch.from_numpy((noise / np.float32(PIXEL_MAX) - IMAGENET_MEAN) / IMAGENET_STD).view(1, 3, 1, 1)
        out_height, out_width = self.image_size
        sizes = [f.shape[1::-1] if portrait else f.shape[:2] for f in frames]   # (h, w) after the transpose
        warped = np.zeros((len(frames), out_height, out_width, 3), dtype=np.uint8)
        out_masks = np.zeros((len(frames), out_height, out_width), dtype=np.uint8)
        boxes = []
        for index, (frame, mask) in enumerate(zip(frames, masks)):
            height, width = sizes[index]
            source = sizes[index] if self.letterbox_per_frame else sizes[0]
            new_height, new_width, top, left = letterbox_geometry(*source, out_height, out_width)
            boxes.append((top, top + new_height, left, left + new_width))
            to_output = _pixel_scale(new_width / width, new_height / height)
            if flip:
                to_output = to_output @ np.array([[-1.0, 0, width - 1], [0, 1, 0], [0, 0, 1]])
            frame, mask = np.asarray(frame, dtype=np.uint8), np.asarray(mask, dtype=np.uint8)
            if index > 0:                     # warp from the crop (a view), so that fill shows beyond it
                crop_to_frame, (x1, y1, x2, y2) = geometry.matrix(height, width)
                to_output = to_output @ crop_to_frame
                rows, columns = (slice(x1, x2), slice(y1, y2)) if portrait else (slice(y1, y2), slice(x1, x2))
                frame, mask = frame[rows, columns], mask[rows, columns]
            if portrait:
                to_output = to_output @ np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
            warp = dict(dsize=(new_width, new_height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
            warped[index, top:top + new_height, left:left + new_width] = cv2.warpAffine(
                frame, to_output[:2], **warp)
            object_255 = mask * np.uint8(255)
            out_masks[index, top:top + new_height, left:left + new_width] = (
                cv2.warpAffine(object_255, to_output[:2], **warp) == 255)
        # channel-first before the float work: per-channel factors then act on long contiguous rows
        image_tensor = torch.empty((len(frames), 3, out_height, out_width), dtype=torch.float32)
        image_tensor.copy_(torch.from_numpy(warped).permute(0, 3, 1, 2)).mul_(scale).add_(offset)
        padding = torch.from_numpy(normalise(np.zeros(3, dtype=np.float32))).view(3, 1, 1)
        for index, (top, bottom, left, right) in enumerate(boxes):     # the letterbox padding, untouched
            image_tensor[index, :, :top] = padding
            image_tensor[index, :, bottom:] = padding
            image_tensor[index, :, :, :left] = padding
            image_tensor[index, :, :, right:] = padding
        mask_tensor = torch.from_numpy(out_masks).unsqueeze(1).float()
        return image_tensor, mask_tensor


def _pixel_scale(scale_x: float, scale_y: float) -> np.ndarray:
    """``[3, 3]`` resize map in pixel-centre coordinates (cv2.resize's): ``dst = (src + 0.5) * s - 0.5``."""
    return np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5], [0, 0, 1]])
