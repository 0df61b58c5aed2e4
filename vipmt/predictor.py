"""Segment an object class in any video, given 1-5 annotated support images: the Python API.

    from vipmt import Predictor

    predictor = Predictor.from_checkpoint("runs/youtube_vis_group1/best.pth")     # device="auto"
    for result in predictor.segment("my_video.mp4", ["cat1.jpg", "cat2.jpg"], ["cat1.png", "cat2.png"]):
        print(result.index, result.score, result.mask.shape)   # mask: uint8 0/1 at the frame's size

The video is read, segmented and handed back one clip at a time: memory holds the current clip,
the supports' encoding and the memory frames' encodings, never the whole video; the memory pool
keeps the 256 most recent reliable frames by default (`memory_pool_size`, 0 = the authors'
unbounded pool). `Predictor.start` gives a `Session` that takes one frame at a time and accepts
annotated corrections; `segment_classes` / `start_classes` segment several classes of one video
with one backbone pass per frame; `segment_many` runs several videos. Frames are RGB, letterboxed
to the model's input size with the dataset's `TestTransform`, and each predicted mask is mapped
back to its frame's original size. The videos: `vipmt.video`; the sessions: `vipmt.session`; the
supports: `vipmt.inputs`; the errors (one base class, `VIPMTError`): `vipmt.errors`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any, Mapping, Sequence

import torch

from config.config import DEFAULTS, ConfigError, check_values
from dataset.transforms import TestTransform
from models import VIPMT, ModelError, VideoSegmenter
from utils.checkpoint import CheckpointError
from utils.runtime import UserError, log_bf16_advice, resolve_device

from .errors import InputError, ModelFileError, VIPMTError
from .inputs import prepare_supports, read_image
from .loading import load_trained_model
from .session import ClassesSession, FrameResult, PendingFramesWarning, Session, unletterbox
from .video import VideoSource, open_video

__all__ = ["Predictor", "check_settings", "Session", "ClassesSession", "FrameResult", "PendingFramesWarning", "VIPMTError",
           "InputError", "VideoSource", "open_video", "prepare_supports", "read_image", "unletterbox"]

logger = logging.getLogger(__name__)


def _per_video_supports(support_images: Any, support_masks: Any, count: int) -> list[tuple[Any, Any]]:
    """segment_many's supports: one set for every video, or a list of `count` sets."""
    def is_sets(items):
        return isinstance(items, (list, tuple)) and len(items) > 0 and all(
            isinstance(x, (list, tuple)) for x in items)

    if not is_sets(support_images):
        if is_sets(support_masks):
            raise InputError("support masks are given per video (a list of lists) but support images are one set; "
                             "give both as one set for every video, or both as one set per video")
        return [(support_images, support_masks)] * count
    if not is_sets(support_masks) or len(support_masks) != len(support_images):
        raise InputError("support images are given per video (a list of lists): give the support masks the same "
                         "way, one list of masks per video")
    if len(support_images) != count:
        raise InputError(f"{len(support_images)} sets of supports for {count} videos; give one set per video, "
                         f"or one set (a list of images) for all of them")
    return list(zip(support_images, support_masks))


def check_settings(*, memory_threshold: float | None = None, memory_size: int | None = None,
                   memory_pool_size: int | None = None, clip_length: int | None = None,
                   seed: int | None = None) -> None:
    """InputError for a Predictor setting out of range (None: not given, not checked)."""
    if memory_threshold is not None and not 0.0 <= memory_threshold <= 1.0:
        raise InputError(f"memory_threshold={memory_threshold}: expected a value in [0, 1]")
    for key, value, least in (("memory_size", memory_size, 1), ("memory_pool_size", memory_pool_size, 0),
                              ("clip_length", clip_length, 1), ("seed", seed, 0)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise InputError(f"{key}={value!r}: expected an integer >= {least}")
    if seed is not None:
        try:
            check_values({"seed": seed})          # the config's rule of seeds
        except ConfigError as error:
            raise InputError(str(error)) from None


class Predictor:
    """Segments videos with a trained VIPMT (see the module docstring for an example).

    Args:
        model: a VIPMT with trained weights (on the device it should run on).
        memory_threshold: a frame whose predicted score is >= this becomes a memory candidate.
        memory_size: at most this many memory frames per clip.
        memory_pool_size: draw memory from the N most recent reliable frames only. The default,
            `predictor_memory_pool_size` (256), bounds memory on videos of any length (~2.4-4.8 MB
            a frame at 240x424: at most ~1.2 GB) and gives the authors' results on any video
            with at most 256 reliable frames before its last clip; 0 keeps every reliable frame
            (the authors' pool, test.py's protocol), which grows without bound.
        clip_length: frames segmented together.
        bf16: bfloat16 autocast (CUDA, or CPUs with AVX512-BF16).
        seed: seed of the memory-frame draws; every video (segment call or session) starts from it.
    """

    def __init__(self, model: VIPMT, *, memory_threshold: float = DEFAULTS.memory_threshold,
                 memory_size: int = DEFAULTS.memory_size,
                 memory_pool_size: int = DEFAULTS.predictor_memory_pool_size,
                 clip_length: int = DEFAULTS.clip_length, bf16: bool = DEFAULTS.test_bf16, seed: int = DEFAULTS.seed):
        check_settings(memory_threshold=memory_threshold, memory_size=memory_size,
                       memory_pool_size=memory_pool_size, clip_length=clip_length, seed=seed)
        self.segmenter = VideoSegmenter(model, clip_length=clip_length, memory_threshold=memory_threshold,
                                        memory_size=memory_size, memory_pool_size=memory_pool_size,
                                        autocast_dtype=torch.bfloat16 if bf16 else None)
        self.transform = TestTransform(model.image_size)
        self.bf16 = bf16
        self.seed = seed
        self.checkpoint: str | None = None      # what from_checkpoint loaded, for records

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        image_size: Sequence[int] | None = None, clip_length: int | None = None,
                        memory_size: int | None = None, memory_threshold: float | None = None,
                        memory_pool_size: int = DEFAULTS.predictor_memory_pool_size,
                        bf16: bool = DEFAULTS.test_bf16, seed: int = DEFAULTS.seed,
                        trusted: bool = False) -> "Predictor":
        """A Predictor for the weights in `path` (our checkpoint or the authors' {'state_dict': ...}
        file, see `vipmt.loading.load_trained_model`).

        device: 'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N'.
        image_size (H, W), clip_length, memory_size, memory_threshold: None takes the value the
        model was trained with (our checkpoint's config), else the default (the authors' files
        have no config); a value given that differs from the checkpoint's is logged. trusted:
        allow pickled objects (files you trust only). The other arguments are the constructor's;
        `settings()` lists what was used. A file that cannot be used raises ModelFileError (a
        VIPMTError and a CheckpointError), a bad argument InputError.
        """
        try:
            device = device if isinstance(device, torch.device) else resolve_device(
                str(device), advice="use device='cpu', or device='auto' (CUDA when available, else the CPU)")
        except UserError as error:
            raise InputError(str(error)) from None
        try:
            loaded = load_trained_model(path, device=device, image_size=image_size, trusted=trusted)
        except VIPMTError:
            raise
        except ModelError as error:          # e.g. an image_size the model cannot take
            raise InputError(str(error)) from None
        except (CheckpointError, ConfigError, UserError) as error:
            raise ModelFileError(str(error)) from None
        saved = loaded.config or {}

        def chosen(key, given):
            if given is None:
                return saved.get(key, DEFAULTS[key])
            if key in saved and _as_json(saved[key]) != _as_json(given):
                logger.info("%s=%s given replaces the checkpoint's %s=%s (the value the model was trained with)",
                            key, _as_json(given), key, _as_json(saved[key]))
            return given

        chosen("image_size", image_size)      # only logged: the model is built for it already

        predictor = cls(loaded.model, memory_threshold=chosen("memory_threshold", memory_threshold),
                        memory_size=chosen("memory_size", memory_size), memory_pool_size=memory_pool_size,
                        clip_length=chosen("clip_length", clip_length), bf16=bf16, seed=seed)
        predictor.checkpoint = loaded.description
        log_bf16_advice(device, bf16)           # a CPU with native bf16: a hint (float32 stays the default)
        return predictor

    @property
    def model(self) -> VIPMT:
        return self.segmenter.model

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input size (H, W)."""
        return self.model.image_size

    def settings(self) -> dict:
        """Every setting the predictions depend on, JSON-ready (predict.py records it)."""
        segmenter = self.segmenter
        return {"image_size": list(self.image_size), "clip_length": segmenter.clip_length,
                "memory_threshold": segmenter.memory_threshold, "memory_size": segmenter.memory_size,
                "memory_pool_size": segmenter.memory_pool_size, "bf16": self.bf16, "seed": self.seed,
                "device": str(segmenter.device)}

    def start(self, support_images: Any, support_masks: Any, *, return_probabilities: bool = False,
              keep_frames: bool = False) -> Session:
        """A `Session` for one video, to push frames one at a time (a camera, a UI). The supports
        (see `prepare_supports`, 1 to 5) are checked here and encoded with the first clip."""
        return Session(self, support_images, support_masks, return_probabilities=return_probabilities,
                       keep_frames=keep_frames)

    def start_classes(self, classes: Mapping[str, tuple], *, return_probabilities: bool = False,
                      keep_frames: bool = False) -> ClassesSession:
        """A `ClassesSession` for one video and several classes, {name: (support_images,
        support_masks)}: `add_frame` yields per frame {name: FrameResult}, each exactly what
        `start(*classes[name])` gives, with one backbone pass per frame for all classes."""
        return ClassesSession(self, classes, return_probabilities=return_probabilities, keep_frames=keep_frames)

    def segment(self, video: Any, support_images: Any, support_masks: Any, *, keep_frames: bool = False,
                return_probabilities: bool = False) -> Iterator[FrameResult]:
        """Segment `video` frame by frame; yields a FrameResult per frame, one clip at a time.

        video: a path (video file, or a folder of frames sorted by name), an array [T, h, w, 3], a
        torch tensor [T, 3, h, w] / [T, h, w, 3], an iterable of RGB uint8 frames [h, w, 3] or a
        `VideoSource`. Frames are RGB: convert OpenCV's BGR frames first
        (`cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)`). support_images / support_masks: see
        `prepare_supports` (1 to 5). keep_frames: also hand back each frame (for overlays).
        return_probabilities: also hand back `FrameResult.probability`, the foreground
        probability (float16 [h, w]) that the mask thresholds at 0.5. The supports and the video
        source are checked here; a bad frame raises InputError when the iteration reaches it.
        """
        session = self.start(support_images, support_masks, return_probabilities=return_probabilities,
                             keep_frames=keep_frames)
        return self._stream(open_video(video), session)

    def segment_classes(self, video: Any, classes: Mapping[str, tuple], *, keep_frames: bool = False,
                        return_probabilities: bool = False) -> Iterator[dict[str, FrameResult]]:
        """Segment several classes of one video; yields per frame {class name: FrameResult}.

        classes: {name: (support_images, support_masks)}. Each class's results are exactly
        `segment(video, *classes[name])`'s (tested bit for bit), but the backbone encodes each
        frame once whatever the number of classes (`models.VideoSegmenter.step_classes`); the
        supports, the memory and the reliable frames stay per class. With keep_frames, the
        FrameResults of one frame share one frame array.
        """
        session = self.start_classes(classes, return_probabilities=return_probabilities, keep_frames=keep_frames)
        return self._stream(open_video(video), session)

    @staticmethod
    def _stream(source: VideoSource, session: Session | ClassesSession) -> Iterator:
        finished = False
        try:
            for name, frame in source:          # checked by the source, with its own labels
                yield from session.add_frame(frame, name)
            yield from session.flush()
            finished = True
        finally:
            if not finished:                    # a bad frame, or the caller stopped iterating: no warning
                session.discard()

    def segment_many(self, videos: Sequence[Any], support_images: Any, support_masks: Any, *,
                     keep_frames: bool = False, return_probabilities: bool = False
                     ) -> Iterator[tuple[int, FrameResult]]:
        """Segment several videos; yields (video index, FrameResult), each video's frames in order.

        support_images / support_masks: one set for all videos (as in `segment`), or a list of
        sets, one per video. Every video starts from `seed`, so each video's results are exactly
        `segment`'s for it. The videos are segmented one after the other, each through
        `segment`: the engine's batched path (`models.VideoSegmenter.segment_many`, which test.py
        uses) stacks clips of several videos in one forward pass, where a larger batch may round
        a frame's features differently in the last bits; this method promises `segment`'s results
        exactly. All supports and video sources are checked before any work starts.
        """
        videos = list(videos)
        if not videos:
            raise InputError("segment_many got no videos; give a list of videos (paths, arrays or iterables of frames)")
        sessions, sources = [], []
        for i, (images, masks) in enumerate(_per_video_supports(support_images, support_masks, len(videos))):
            try:
                sources.append(open_video(videos[i]))
                sessions.append(self.start(images, masks, return_probabilities=return_probabilities,
                                           keep_frames=keep_frames))
            except InputError as error:
                raise InputError(f"video {i}: {error}") from None
        return self._stream_many(sources, sessions)

    def _stream_many(self, sources: list, sessions: list) -> Iterator[tuple[int, FrameResult]]:
        for i, (source, session) in enumerate(zip(sources, sessions)):
            try:
                for result in self._stream(source, session):
                    yield i, result
            except InputError as error:         # a bad frame found on the way: say which video
                raise InputError(f"video {i}: {error}") from None


def _as_json(value: Any) -> Any:
    """A setting as predictions.json records it (tuples as lists), for comparisons and logs."""
    return list(value) if isinstance(value, (list, tuple)) else value
