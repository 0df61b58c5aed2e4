"""Segment an object class in any video, given 1-5 annotated support images: the Python API.

    from vipmt import Predictor

    predictor = Predictor.from_checkpoint("runs/youtube_vis_group1/best.pth", device="cuda")
    for result in predictor.segment("my_video.mp4", ["cat1.jpg", "cat2.jpg"], ["cat1.png", "cat2.png"]):
        print(result.index, result.score, result.mask.shape)   # mask: uint8 0/1 at the frame's size

The video is read, segmented and handed back one clip at a time (`models.VideoSession`): memory
holds the current clip, the supports' encoding and the memory frames' encodings, never the
whole video. Frames are letterboxed to the model's input size with the dataset's
`TestTransform`, and each predicted mask is mapped back to its frame's original size.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from config.config import DEFAULTS
from dataset.transforms import TestTransform, letterbox_geometry
from models import VIPMT, VideoSegmenter, VideoSession
from models.vipmt import SHOTS
from utils.runtime import UserError

from .loading import load_trained_model

__all__ = ["Predictor", "FrameResult", "InputError", "VideoSource", "open_video", "prepare_supports",
           "read_image", "unletterbox"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FRAME_FOLDER_FPS = 10.0      # frame rate reported for a folder of frames (it has none of its own)
MAX_SUPPORTS = SHOTS         # the model treats support frames beyond these as memory frames
MASK_VALUES = ({0, 1}, {0, 255})


class InputError(UserError, ValueError):
    """A video, image or mask the predictor cannot use; the message names it and what was expected."""


@dataclass
class FrameResult:
    """The prediction for one video frame."""
    index: int                  # position in the video, from 0
    name: str | None            # file name without extension (frame folders), "00042" (video files), else None
    mask: np.ndarray            # uint8 [h, w] at the frame's original size, 1 = object
    score: float                # predicted IoU of the mask (the model's confidence in it)
    frame: np.ndarray | None = None   # the RGB frame [h, w, 3] when segment(..., keep_frames=True)


# ------------------------------------------------------------------ images and masks
def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> RGB uint8 [h, w, 3]."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read image {os.fspath(path)!r} (missing or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_rgb(image: Any, label: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise InputError(f"{label} must be an RGB image, uint8 [h, w, 3]; got {image.dtype} {list(image.shape)}")
    return image


def _read_mask(path: str) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputError(f"cannot read support mask {path!r} (missing or not an image)")
    return mask[..., :3].max(axis=2) if mask.ndim == 3 else mask


def _binary_mask(mask: Any, label: str, image_label: str, image_shape: tuple) -> np.ndarray:
    """A 0/255 or 0/1 mask -> 0/1 uint8 [h, w], checked against its support image."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise InputError(f"{label} must be a 2-D array [h, w] of 0/1 or 0/255; got {mask.dtype} {list(mask.shape)}")
    values = set(np.unique(mask).tolist())
    if not any(values <= allowed for allowed in MASK_VALUES):
        raise InputError(f"{label} has values {sorted(values)[:6]}; expected 0/255 or 0/1")
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
    """A path, an array (one item if it has `single_ndim` dims, else a stack) or a sequence -> list."""
    if _is_path(items):
        return [items]
    if isinstance(items, np.ndarray):
        return [items] if items.ndim == single_ndim else list(items)
    if not isinstance(items, Iterable):
        raise InputError(f"{what} must be paths or arrays (one, a list or a stack), got {type(items).__name__}")
    return list(items)


def prepare_supports(support_images: Any, support_masks: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read and check the annotated supports.

    support_images: paths or RGB uint8 arrays [h, w, 3] (one, a list, or a stack [S, h, w, 3]);
    support_masks: PNG paths or arrays [h, w] of 0/1 or 0/255 (bool too), one per image, of its size.
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
        raise InputError(f"{len(masks)} masks for {len(images)} support images; give one mask per image")
    rgb = [read_image(x) if _is_path(x) else _check_rgb(x, label) for x, label in zip(images, image_labels)]
    binary = []
    for i, (mask, image, image_label) in enumerate(zip(masks, rgb, image_labels)):
        label = f"support mask {os.fspath(mask)!r}" if _is_path(mask) else f"support mask {i + 1}"
        binary.append(_binary_mask(_read_mask(os.fspath(mask)) if _is_path(mask) else mask,
                                   label, image_label, image.shape))
    return rgb, binary


# ------------------------------------------------------------------ videos
class VideoSource:
    """A video read one frame at a time.

    video: a video file (anything OpenCV reads), a folder of frame images (sorted by name), an
    array [T, h, w, 3] or an iterable of RGB uint8 frames [h, w, 3] (e.g. a generator). Every frame
    must have the first frame's size. `fps` and `length` are None where the source does not say.
    """

    def __init__(self, video: Any):
        self.fps: float | None = None
        self.length: int | None = None
        self._path = self._names = self._frames = None
        if _is_path(video):
            self._path = os.fspath(video)
            if os.path.isdir(self._path):
                self._names = sorted(f for f in os.listdir(self._path) if f.lower().endswith(FRAME_EXTENSIONS))
                if not self._names:
                    raise InputError(f"folder {self._path!r} has no frames ({', '.join(FRAME_EXTENSIONS)})")
                self.fps, self.length = FRAME_FOLDER_FPS, len(self._names)
            elif os.path.isfile(self._path):
                capture = cv2.VideoCapture(self._path)
                self.fps = float(capture.get(cv2.CAP_PROP_FPS) or FRAME_FOLDER_FPS)
                self.length = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None    # an estimate for some formats
                capture.release()
            else:
                raise InputError(f"video {self._path!r} does not exist (give a video file or a folder of frames)")
        elif isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise InputError(f"a video array must be RGB uint8 [T, h, w, 3]; got {video.dtype} {list(video.shape)}")
            self._frames, self.length = video, len(video)
        elif isinstance(video, Iterable) and not isinstance(video, (bytes, str)):
            self._frames = video
        else:
            raise InputError(f"video must be a path, an array [T, h, w, 3] or an iterable of RGB frames, "
                             f"got {type(video).__name__}")

    def _raw(self) -> Iterator[tuple[str | None, str, Any]]:
        """(name, label for messages, frame) of every frame, unchecked."""
        if self._names is not None:
            for name in self._names:
                path = os.path.join(self._path, name)
                yield os.path.splitext(name)[0], f"frame {path!r}", read_image(path)
        elif self._path is not None:
            capture = cv2.VideoCapture(self._path)
            try:
                index = 0
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    yield f"{index:05d}", f"frame {index} of {self._path!r}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    index += 1
            finally:
                capture.release()
        else:
            for index, frame in enumerate(self._frames):
                yield None, f"video frame {index}", frame

    def __iter__(self) -> Iterator[tuple[str | None, np.ndarray]]:
        """(name, RGB uint8 frame [h, w, 3]) in order."""
        first_shape = None
        for name, label, frame in self._raw():
            frame = _check_rgb(frame, label)
            if first_shape is None:
                first_shape = frame.shape
            elif frame.shape != first_shape:
                raise InputError(f"{label} is {frame.shape[1]}x{frame.shape[0]} but the video's first frame is "
                                 f"{first_shape[1]}x{first_shape[0]}; all frames of a video must have one size")
            yield name, frame
        if first_shape is None:
            if self._path is not None and self._names is None:
                raise InputError(f"cannot read any frame from video {self._path!r} (unreadable or unsupported format)")
            raise InputError("the video has no frames")


def open_video(video: Any) -> VideoSource:
    """`VideoSource(video)`, or `video` itself if it already is one."""
    return video if isinstance(video, VideoSource) else VideoSource(video)


def unletterbox(mask: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """A [H, W] model-size mask -> uint8 [h, w] at the original frame size (nearest): the
    inverse of `dataset.transforms.letterbox_image`'s geometry."""
    h, w = original
    new_h, new_w, top, left = letterbox_geometry(h, w, *mask.shape)
    crop = mask[top:top + new_h, left:left + new_w].astype(np.uint8)
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)


def _clips(source: VideoSource, length: int) -> Iterator[list]:
    """Consecutive clips [(index, name, frame)] of `length` frames (the last may be shorter)."""
    clip = []
    for index, (name, frame) in enumerate(source):
        clip.append((index, name, frame))
        if len(clip) == length:
            yield clip
            clip = []
    if clip:
        yield clip


# ------------------------------------------------------------------ the predictor
class Predictor:
    """Segments videos with a trained VIPMT (see the module docstring for an example).

    Args:
        model: a VIPMT with trained weights (on the device it should run on).
        memory_threshold: a frame whose predicted score is >= this becomes a memory candidate.
        memory_size: at most this many memory frames per clip.
        memory_pool_size: 0 draws memory from every reliable frame so far (the authors'; memory
            grows by one encoding per reliable frame); N > 0 from the N most recent ones only.
        clip_length: frames segmented together.
        bf16: bfloat16 autocast (CUDA, or CPUs with AVX512-BF16).
        seed: seed of the memory-frame draws; every `segment` call starts from it.
    """

    def __init__(self, model: VIPMT, *, memory_threshold: float = DEFAULTS.memory_threshold,
                 memory_size: int = DEFAULTS.memory_size, memory_pool_size: int = DEFAULTS.memory_pool_size,
                 clip_length: int = DEFAULTS.clip_length, bf16: bool = DEFAULTS.test_bf16, seed: int = DEFAULTS.seed):
        if not 0.0 <= memory_threshold <= 1.0:
            raise InputError(f"memory_threshold={memory_threshold}: expected a value in [0, 1]")
        for key, value, least in (("memory_size", memory_size, 1), ("memory_pool_size", memory_pool_size, 0),
                                  ("clip_length", clip_length, 1)):
            if not isinstance(value, int) or value < least:
                raise InputError(f"{key}={value!r}: expected an integer >= {least}")
        self.segmenter = VideoSegmenter(model, clip_length=clip_length, memory_threshold=memory_threshold,
                                        memory_size=memory_size, memory_pool_size=memory_pool_size,
                                        autocast_dtype=torch.bfloat16 if bf16 else None)
        self.transform = TestTransform(model.image_size)
        self.seed = seed

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = DEFAULTS.device,
                        image_size: Sequence[int] | None = None, trusted: bool = False,
                        memory_threshold: float = DEFAULTS.memory_threshold, memory_size: int = DEFAULTS.memory_size,
                        memory_pool_size: int = DEFAULTS.memory_pool_size, clip_length: int = DEFAULTS.clip_length,
                        bf16: bool = DEFAULTS.test_bf16, seed: int = DEFAULTS.seed) -> "Predictor":
        """A Predictor for the weights in `path` (our checkpoint or the authors' {'state_dict': ...}
        file, see `vipmt.loading.load_trained_model`). device: 'auto' (CUDA if available), 'cpu',
        'cuda' or 'cuda:N'; image_size (H, W): default the checkpoint's; trusted: allow pickled
        objects (files you trust only). The other arguments are the constructor's."""
        loaded = load_trained_model(path, device=device, image_size=image_size, trusted=trusted)
        return cls(loaded.model, memory_threshold=memory_threshold, memory_size=memory_size,
                   memory_pool_size=memory_pool_size, clip_length=clip_length, bf16=bf16, seed=seed)

    @property
    def model(self) -> VIPMT:
        return self.segmenter.model

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input size (H, W)."""
        return self.model.image_size

    def segment(self, video: Any, support_images: Any, support_masks: Any, *,
                keep_frames: bool = False) -> Iterator[FrameResult]:
        """Segment `video` frame by frame; yields a FrameResult per frame, one clip at a time.

        video: a path (video file, or a folder of frames sorted by name), an array [T, h, w, 3], an
        iterable of RGB uint8 frames [h, w, 3] or a `VideoSource`. support_images / support_masks:
        see `prepare_supports` (1 to 5). keep_frames: also hand back each frame (for overlays).
        The supports and the video source are checked here; a bad frame raises InputError when
        the iteration reaches it.
        """
        images, masks = prepare_supports(support_images, support_masks)
        source = open_video(video)
        support_img, support_mask = self.transform(images, masks)
        return self._stream(source, support_img, support_mask, keep_frames)

    def _stream(self, source: VideoSource, support_img: torch.Tensor, support_mask: torch.Tensor,
                keep_frames: bool) -> Iterator[FrameResult]:
        session = None
        for clip in _clips(source, self.segmenter.clip_length):
            if session is None:     # encode the supports once a clip is read: a bad video fails before any model work
                session = self.segmenter.start(support_img, support_mask,
                                               generator=torch.Generator().manual_seed(self.seed))
            yield from self._segment_clip(session, clip, keep_frames)

    def _segment_clip(self, session: VideoSession, clip: list, keep_frames: bool) -> Iterator[FrameResult]:
        """clip: [(index, name, RGB frame)] of one size -> its FrameResults."""
        frames = [frame for _, _, frame in clip]
        no_mask = np.zeros(frames[0].shape[:2], np.uint8)      # the transform letterboxes masks too
        images, _ = self.transform(frames, [no_mask] * len(frames))
        result = session.step(images)
        for (index, name, frame), pred, score in zip(clip, result.pred.numpy(), result.score.tolist()):
            yield FrameResult(index=index, name=name, mask=unletterbox(pred, frame.shape[:2]), score=score,
                              frame=frame if keep_frames else None)
