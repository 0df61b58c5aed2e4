"""What the Predictor accepts as frames and annotated supports: images and masks, read and
checked, with errors that name the input and say what to give instead (vipmt.video reads videos).

Arrays are numpy or torch: frames RGB uint8 [h, w, 3] (torch also [3, h, w]), masks [h, w] of
0/1 or 0/255 (bool, integer or float). Frames are RGB: OpenCV reads BGR, so convert a cv2 frame
first, `cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)` (paths are read here, in RGB).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from models.vipmt import SHOTS
from utils.fileio import unreadable_reason

from .errors import InputError

__all__ = ["InputError", "MAX_SUPPORTS", "prepare_supports", "read_image", "as_rgb_frame"]

MAX_SUPPORTS = SHOTS         # the model treats support frames beyond these as memory frames
MASK_VALUES = ({0, 1}, {0, 255})


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _from_torch(x: Any, channels_first: bool = False) -> Any:
    """A torch tensor -> numpy (on the CPU; CHW -> HWC when `channels_first` and it reads as
    [3, h, w]); anything else unchanged."""
    if not isinstance(x, torch.Tensor):
        return x
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
        x = x.float()
    if channels_first and x.dim() == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
        x = x.permute(1, 2, 0)
    return x.numpy()


def _readable(path: str, what: str) -> str:
    """``path`` if it is a regular file; else InputError naming it (a named pipe would block cv2.imread)."""
    problem = unreadable_reason(path)
    if problem:
        raise InputError(f"cannot read {what} {path!r}: it {problem}")
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> RGB uint8 [h, w, 3]."""
    image = cv2.imread(_readable(os.fspath(path), "image"), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read image {os.fspath(path)!r} (not an image OpenCV can decode)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def as_rgb_frame(image: Any, label: str) -> np.ndarray:
    """A frame (numpy RGB uint8 [h, w, 3], or a torch tensor [h, w, 3] / [3, h, w]) -> numpy
    uint8 [h, w, 3]: the caller's array itself where it already is one (not a copy).
    InputError naming `label` otherwise, with a hint for common near misses."""
    torch_input = isinstance(image, torch.Tensor)
    if _is_path(image):     # support paths are read before this: a path here is a video frame
        raise InputError(f"{label} is a path ({os.fspath(image)!r}): a list of frame paths is not accepted as a "
                         f"video; give the folder that holds the frames (sorted by name) or a video file, or read "
                         f"the frames into RGB arrays first (vipmt.predictor.read_image)")
    image = np.asarray(_from_torch(image, channels_first=True))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        expected = "uint8 [h, w, 3] or [3, h, w] (a torch tensor)" if torch_input else "uint8 [h, w, 3]"
        raise InputError(f"{label} must be an RGB image, {expected}; got {image.dtype} {list(image.shape)}"
                         f"{_rgb_hint(image, torch_input)}")
    return image


def _rgb_hint(image: np.ndarray, torch_input: bool = False) -> str:
    """What to do with a common not-quite-RGB array."""
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3 and not torch_input:
        return " (channels first: a numpy frame is [h, w, 3], e.g. np.transpose(frame, (1, 2, 0)))"
    if image.ndim == 3 and image.shape[2] == 3 and np.issubdtype(image.dtype, np.floating) and torch_input:
        return " (floats: scale to 0-255 and convert, e.g. (frame * 255).round().to(torch.uint8))"
    if image.ndim == 2:
        return " (a grayscale image: repeat it into 3 channels, e.g. np.repeat(gray[..., None], 3, axis=2))"
    if image.ndim == 3 and image.shape[2] == 4:
        return " (RGBA: drop the alpha channel, image[..., :3])"
    if image.ndim == 3 and image.shape[2] == 3 and np.issubdtype(image.dtype, np.floating):
        return " (floats: scale to 0-255 and convert, e.g. (image * 255).round().astype(np.uint8))"
    return ""


def _palette_indices(path: str) -> np.ndarray | None:
    """The indices of a palette (indexed-colour) image, e.g. DAVIS / YouTube-VOS annotations, whose index
    is the object id (OpenCV would expand them to the palette's colours); None for other images."""
    try:
        with Image.open(path) as image:
            return np.asarray(image) if image.mode == "P" else None
    except (OSError, ValueError, SyntaxError):       # PIL cannot read it: OpenCV may (and says so if not)
        return None


def _read_mask(path: str) -> np.ndarray:
    _readable(path, "support mask")
    indices = _palette_indices(path)
    if indices is not None:
        objects = sorted(set(np.unique(indices).tolist()) - {0})
        if len(objects) > 1:
            raise InputError(f"support mask {path!r} is a palette (indexed) image of {len(objects)} objects (indices "
                             f"{', '.join(map(str, objects[:6]))}{', ...' if len(objects) > 6 else ''}); a support mask "
                             f"marks one object: save one object's pixels as the mask, e.g. (indices == 1) as 0/255")
        return indices
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputError(f"cannot read support mask {path!r} (not an image OpenCV can decode)")
    if mask.ndim == 3 and mask.shape[2] == 4 and not mask[..., :3].any() and mask[..., 3].min() < mask[..., 3].max():
        raise InputError(f"support mask {path!r} is black in its colour channels and marks pixels only in its alpha "
                         f"(transparency) channel, which is not read; save the object as 255 (white) on 0 (black)")
    return mask[..., :3].max(axis=2) if mask.ndim == 3 else mask


def _binary_mask(mask: Any, label: str, image_label: str, image_shape: tuple) -> np.ndarray:
    """A 0/255 or 0/1 mask (numpy or torch) -> 0/1 uint8 [h, w], checked against its support image."""
    mask = np.asarray(_from_torch(mask))
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise InputError(f"{label} must be a 2-D array [h, w] of 0/1 or 0/255; got {mask.dtype} {list(mask.shape)}")
    values = sorted(set(np.unique(mask).tolist()))
    if not any(set(values) <= allowed for allowed in MASK_VALUES):
        listed = f"{values[:6]}" if len(values) <= 6 else f"{len(values)} values ({values[0]}..{values[-1]})"
        hint = ("JPEG compression changes a mask's values: save masks as PNG (lossless)"
                if label.lower().endswith((".jpg'", ".jpeg'")) else
                "a mask holds the object as 1 or 255 and the rest as 0: threshold it first, e.g. (mask > 127)")
        raise InputError(f"{label} has values {listed}; expected 0/255 or 0/1. {hint[0].upper()}{hint[1:]}")
    if mask.shape != image_shape[:2]:
        raise InputError(f"{label} is {mask.shape[1]}x{mask.shape[0]} but {image_label} is "
                         f"{image_shape[1]}x{image_shape[0]}; they must match")
    mask = (mask > 0).astype(np.uint8)
    if not mask.any():
        raise InputError(f"{label} is empty: it must mark the object in {image_label}")
    return mask


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _as_list(items: Any, single_ndim: int, what: str) -> list:
    """A path, an array (numpy or torch: a stack if it has `single_ndim` + 1 dims, else one item) or
    a sequence -> list."""
    if _is_path(items):
        return [items]
    if _is_array(items):
        return list(items) if items.ndim == single_ndim + 1 else [items]
    if not isinstance(items, Iterable):
        raise InputError(f"{what} must be paths or arrays (one, a list or a stack), got {type(items).__name__}")
    return list(items)


def prepare_supports(support_images: Any, support_masks: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read and check the annotated supports.

    support_images: paths or RGB uint8 arrays [h, w, 3] (one, a list, or a stack [S, h, w, 3]; torch
    tensors also [3, h, w] / [S, 3, h, w]); support_masks: PNG paths or arrays [h, w] of 0/1 or
    0/255 (bool, integer or float; numpy or torch), one per image, of its size.
    Returns (RGB uint8 images, 0/1 uint8 masks). Raises InputError naming the bad input.
    """
    images, masks = _as_list(support_images, 3, "support images"), _as_list(support_masks, 2, "support masks")
    image_labels = [f"support image {os.fspath(x)!r}" if _is_path(x) else f"support image {i + 1}"
                    for i, x in enumerate(images)]
    if not images:
        raise InputError("no support image given: at least one annotated support image is needed")
    if len(images) > MAX_SUPPORTS:
        raise InputError(f"{len(images)} support images given; at most {MAX_SUPPORTS} are used")
    if len(masks) < len(images):
        raise InputError(f"every support image needs a mask: {len(images)} images but {len(masks)} masks "
                         f"(no mask for {', '.join(image_labels[len(masks):])})")
    if len(masks) > len(images):
        stacked = (f" (one array {list(support_masks.shape)} is read as a stack of {len(masks)} masks [S, h, w]; "
                   f"give a list of 2-D masks [h, w])" if _is_array(support_masks) else "")
        raise InputError(f"{len(masks)} masks for {len(images)} support images{stacked}; give one mask per image")
    rgb = [read_image(x) if _is_path(x) else as_rgb_frame(x, label) for x, label in zip(images, image_labels)]
    binary = []
    for i, (mask, image, image_label) in enumerate(zip(masks, rgb, image_labels)):
        label = f"support mask {os.fspath(mask)!r}" if _is_path(mask) else f"support mask {i + 1}"
        binary.append(_binary_mask(_read_mask(os.fspath(mask)) if _is_path(mask) else mask,
                                   label, image_label, image.shape))
    return rgb, binary
