"""One video segmented frame by frame, for one object class (`Session`) or several (`ClassesSession`).

    with predictor.start(support_images, support_masks) as session:
        for frame in camera:                          # RGB uint8 [h, w, 3] (or a torch tensor)
            for result in session.add_frame(frame):   # a clip's worth of FrameResults, or []
                ...
        results = session.flush()                     # the frames of the last, shorter clip

The split of the work: a session here holds the caller's frames until a clip is full (each one
letterboxed into the session's own tensor as it arrives, so a caller may reuse its buffer), and
each class's model state (its supports' encoding, memory pool, reliable frames) is a
`models.VideoSession`, stepped through the engine's public methods only. `Predictor.segment` and
`Predictor.segment_classes` are written on these sessions.

A session warns (`PendingFramesWarning`) where frames would be lost without a word: at the end of
a `with` block, or when it is garbage-collected, with frames added but not segmented (the frames
after the last full clip, which `flush()` segments).
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Protocol

import cv2
import numpy as np
import torch

from dataset.transforms import letterbox_geometry
from models import SupportEncoding, VideoSegmenter, VideoSession

from .errors import InputError, SessionBrokenError
from .inputs import MAX_SUPPORTS, as_rgb_frame, prepare_supports

__all__ = ["FrameResult", "Session", "ClassesSession", "PendingFramesWarning", "unletterbox"]


class PredictorParts(Protocol):
    """What a session uses of its `vipmt.predictor.Predictor` (which imports this module, not the reverse)."""
    segmenter: VideoSegmenter
    seed: int
    transform: Callable       # (images, masks) -> (images [S,3,H,W], masks [S,1,H,W]), letterboxed

    @property
    def image_size(self) -> tuple[int, int]: ...


@dataclass
class FrameResult:
    """The prediction for one video frame (and one class)."""
    index: int                  # position in the video, from 0
    name: str | None            # file name without extension (frame folders), "00042" (video files), else None
    mask: np.ndarray            # uint8 [h, w] at the frame's original size, 1 = object
    score: float                # predicted IoU of the mask (the model's confidence in it)
    frame: np.ndarray | None = None   # the RGB frame [h, w, 3] (a copy) when keep_frames=True
    # with return_probabilities=True: float16 [h, w], the softmax foreground probability before
    # the threshold (mask == (probability > 0.5)), mapped to the frame's size as the mask is
    probability: np.ndarray | None = None


class PendingFramesWarning(UserWarning):
    """A session ended (a `with` block, or garbage collection) holding frames it never segmented."""


def check_letterbox_fits(shape: tuple, image_size: tuple, label: str) -> None:
    """InputError for an image so elongated that letterboxing it to the model's input size (H, W)
    leaves a side of 0 pixels (e.g. 3000x2 into 424x240)."""
    height, width = shape[:2]
    new_h, new_w, _, _ = letterbox_geometry(height, width, *image_size)
    if new_h < 1 or new_w < 1:
        raise InputError(f"{label} is {width}x{height}: too elongated for the model's {image_size[1]}x"
                         f"{image_size[0]} input (letterboxed it would be {new_w}x{new_h} pixels); crop "
                         f"or pad it to an aspect ratio nearer the model's")


def unletterbox(mask: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """A [H, W] model-size mask (int: -> uint8) or map (float32) -> [h, w] at the original frame
    size (nearest): the inverse of `dataset.transforms.letterbox_image`'s geometry."""
    h, w = original
    new_h, new_w, top, left = letterbox_geometry(h, w, *mask.shape)
    crop = mask[top:top + new_h, left:left + new_w]
    crop = crop.astype(np.float32 if np.issubdtype(crop.dtype, np.floating) else np.uint8)
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)


def _probability_map(probability: np.ndarray, mask: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """A model-size float32 foreground probability [H, W] -> float16 [h, w] at the frame's size,
    with the mask's geometry (nearest), so that `probability > 0.5` is exactly `mask` ([h, w] 0/1).

    float16 rounds probabilities within 2**-12 of 0.5 onto 0.5, and softmax may round a logit
    margin of a few ulps onto 0.5 too: such pixels are moved to the mask's side of 0.5 by one
    float16 step (the mask is the model's argmax, which stays the reference).
    """
    half = unletterbox(probability, original).astype(np.float16)
    just_above = np.nextafter(np.float16(0.5), np.float16(1))
    on = mask > 0
    half[on & (half <= 0.5)] = just_above
    half[~on & (half > 0.5)] = np.float16(0.5)
    return half


@dataclass
class _Frame:
    """A frame added and not yet segmented: the session's own copies, never the caller's buffer."""
    index: int
    name: str | None
    image: torch.Tensor             # [1,3,H,W] letterboxed and normalised
    shape: tuple[int, int]          # (h, w) of the frame
    frame: np.ndarray | None        # a copy of the RGB frame (keep_frames), else None


class _Pending:
    """The frames added since the last clip; shared with the finaliser that warns about them."""

    def __init__(self):
        self.frames: list[_Frame] = []
        self.warned = False


def _warn_pending(pending: _Pending, kind: str, how: str) -> None:
    if pending.frames and not pending.warned:
        pending.warned = True
        warnings.warn(f"a {kind} {how} with {len(pending.frames)} frame(s) added but not segmented (the frames "
                      f"after the last full clip): call flush() after the last frame to get their results",
                      PendingFramesWarning, stacklevel=3)


class _ClassState:
    """One class of a session: its supports, the corrections added, its model state (engine session)."""

    def __init__(self, predictor: PredictorParts, support_images: Any, support_masks: Any):
        images, masks = prepare_supports(support_images, support_masks)
        for i, image in enumerate(images):
            check_letterbox_fits(image.shape, predictor.image_size, f"support image {i + 1}")
        self.supports = predictor.transform(images, masks)     # (images [S,3,H,W], masks [S,1,H,W])
        self.initial_count = len(images)
        self.corrections: list[SupportEncoding] = []           # encodings of the added supports, oldest first
        self.pending: list = []        # (first clip number it applies to, images [1,3,H,W], masks [1,1,H,W])
        self.engine: VideoSession | None = None

    def add_support(self, predictor: PredictorParts, frame: Any, mask: Any, first_clip: int) -> None:
        room = MAX_SUPPORTS - self.initial_count
        if room <= 0:
            raise InputError(f"this session already has {self.initial_count} supports, the most the model uses; "
                             f"start the session with fewer supports to leave room for added ones")
        images, masks = prepare_supports([frame], [mask])
        self.pending.append((first_clip, *predictor.transform(images, masks)))

    def engine_for_clip(self, predictor: PredictorParts, number: int) -> VideoSession:
        """The engine session, started at the first clip (bad frames fail before any model work),
        with the corrections due by clip `number` among its supports."""
        segmenter = predictor.segmenter
        if self.engine is None:
            self.engine = segmenter.start(*self.supports, generator=torch.Generator().manual_seed(predictor.seed))
        due = [p for p in self.pending if p[0] <= number]
        if due:
            self.pending = [p for p in self.pending if p[0] > number]
            self.corrections += [segmenter.encode_supports(image, mask) for _, image, mask in due]
            del self.corrections[:-(MAX_SUPPORTS - self.initial_count)]
            initial = self.engine.supports.select(list(range(self.initial_count)))
            self.engine.supports = SupportEncoding.cat([initial, *self.corrections])
        return self.engine


class _FrameStream:
    """The frames of one video, segmented a clip at a time for each class of `classes`
    ({key: (support_images, support_masks)}): what `Session` and `ClassesSession` share."""

    def __init__(self, predictor: PredictorParts, classes: Mapping[Hashable, tuple], *, return_probabilities: bool,
                 keep_frames: bool, label=lambda key: ""):
        self.predictor = predictor
        self.return_probabilities = return_probabilities
        self.keep_frames = keep_frames
        self._classes: dict[Hashable, _ClassState] = {}
        for key, (images, masks) in classes.items():
            try:
                self._classes[key] = _ClassState(predictor, images, masks)
            except InputError as error:
                raise InputError(f"{label(key)}{error}") from None
        self._pending = _Pending()
        self._clips_done = 0
        self._frames_added = 0
        self._first_shape: tuple | None = None
        self._no_mask: np.ndarray | None = None
        self._closed = False
        self._broken: str | None = None         # what cut a clip's model work off (then no more frames)
        weakref.finalize(self, _warn_pending, self._pending, type(self).__name__, "was garbage-collected")

    @property
    def frames_added(self) -> int:
        return self._frames_added

    @property
    def pending_frames(self) -> int:
        """Frames added but not segmented yet (fewer than a clip; `flush()` segments them)."""
        return len(self._pending.frames)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise SessionBrokenError(f"this {type(self).__name__} was interrupted by {self._broken}: its model state "
                                     f"(memory, reliable frames) may be half updated and those frames have no "
                                     f"results, so it takes no more frames. Start a new session and add the "
                                     f"video's frames again from its first frame")
        if self._closed:
            raise InputError(f"this {type(self).__name__} is closed; start a new one for another video")

    def _add(self, frame: Any, name: str | None) -> list[dict]:
        self._check_usable()
        index = self._frames_added
        frame = as_rgb_frame(frame, f"frame {index}")
        if self._first_shape is None:
            check_letterbox_fits(frame.shape, self.predictor.image_size, f"video frame {name or index}")
            self._first_shape, self._no_mask = frame.shape, np.zeros(frame.shape[:2], np.uint8)
        elif frame.shape != self._first_shape:
            raise InputError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                             f"{self._first_shape[1]}x{self._first_shape[0]}; all frames of a video must have one size")
        image, _ = self.predictor.transform([frame], [self._no_mask])      # the session's own tensor
        kept = frame.copy() if self.keep_frames else None                   # the caller may reuse `frame`
        self._pending.frames.append(_Frame(index, name, image, frame.shape[:2], kept))
        self._frames_added += 1
        if len(self._pending.frames) < self.predictor.segmenter.clip_length:
            return []
        return self._segment_clip()

    def _flush(self) -> list[dict]:
        self._check_usable()
        return self._segment_clip() if self._pending.frames else []

    def _add_support(self, key: Hashable, frame: Any, mask: Any) -> None:
        self._check_usable()
        # a clip being filled holds frames added before this call: the clip after it is the first to use it
        first_clip = self._clips_done + (1 if self._pending.frames else 0)
        self._classes[key].add_support(self.predictor, frame, mask, first_clip)

    def _segment_clip(self) -> list[dict]:
        clip = list(self._pending.frames)
        self._pending.frames.clear()
        number, self._clips_done = self._clips_done, self._clips_done + 1
        try:
            engines = [state.engine_for_clip(self.predictor, number) for state in self._classes.values()]
            steps = self.predictor.segmenter.step_classes(engines, torch.cat([f.image for f in clip]),
                                                          probabilities=self.return_probabilities)
        except BaseException as error:     # KeyboardInterrupt included: the engines may be half stepped
            self._broken = (f"{type(error).__name__} while it segmented frames {clip[0].index}-{clip[-1].index} "
                            f"(clip {number + 1})")
            raise
        results = []
        for t, frame in enumerate(clip):
            per_class = {}
            for key, step in zip(self._classes, steps):
                mask = unletterbox(step.pred[t].numpy(), frame.shape)
                probability = (_probability_map(step.probability[t].numpy(), mask, frame.shape)
                               if self.return_probabilities else None)
                per_class[key] = FrameResult(index=frame.index, name=frame.name, mask=mask,
                                             score=float(step.score[t]), frame=frame.frame, probability=probability)
            results.append(per_class)
        return results

    def discard(self) -> int:
        """Drop the frames added but not segmented yet, without a warning; returns how many."""
        dropped = len(self._pending.frames)
        self._pending.frames.clear()
        return dropped

    def _close(self) -> list[dict]:
        results = self._flush()
        self._closed = True
        return results

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:     # an exception on its way out says more than this warning
            _warn_pending(self._pending, type(self).__name__, "left its with-block")


class Session(_FrameStream):
    """One video segmented frame by frame for one class (from `Predictor.start`): push frames, get results.

    Frames are segmented a clip (`clip_length` frames) at a time, exactly as `Predictor.segment`
    does (which is written on this class): `add_frame` returns [] until a clip is full, then the
    clip's results. `flush()` segments the frames added since the last full clip as a shorter
    clip: after the last frame, or mid-stream (a flush mid-stream moves every later clip boundary,
    so later results differ from an unflushed run's: clips group other frames, and memory is drawn
    per clip). `add_support(frame, mask)` adds an annotated frame (e.g. a corrected mask) as a
    support of every clip that starts after the call; frames already added keep their results.
    Used as a context manager, the session warns at the end of the block about frames not
    segmented; so does a session garbage-collected with such frames (`PendingFramesWarning`).
    """

    def __init__(self, predictor: PredictorParts, support_images: Any, support_masks: Any, *,
                 return_probabilities: bool = False, keep_frames: bool = False):
        super().__init__(predictor, {None: (support_images, support_masks)},
                         return_probabilities=return_probabilities, keep_frames=keep_frames)

    @property
    def memory_pool(self) -> list:
        """The reliable frames' encodings kept as memory candidates (`models.engine.MemoryFrame`)."""
        engine = self._classes[None].engine
        return engine.memory_pool if engine is not None else []

    def add_frame(self, frame: Any, name: str | None = None) -> list[FrameResult]:
        """The next frame of the video (RGB uint8 [h, w, 3], or a torch tensor [h, w, 3] / [3, h, w],
        of the first frame's size) -> the FrameResults that became ready: the whole clip once it is
        full, else []. The frame is copied: the caller may refill its buffer at once."""
        return [results[None] for results in self._add(frame, name)]

    def flush(self) -> list[FrameResult]:
        """The results of the frames added since the last full clip (a shorter clip), or []."""
        return [results[None] for results in self._flush()]

    def close(self) -> list[FrameResult]:
        """`flush()`, after which the session takes no more frames."""
        return [results[None] for results in self._close()]

    def add_support(self, frame: Any, mask: Any) -> None:
        """Add an annotated frame (RGB uint8 [h, w, 3] or a path) with its mask ([h, w] 0/1 or
        0/255, or a PNG path) as a support of every clip that starts after this call.

        At most 5 supports are used (the model's number of shots): beyond that the oldest added
        support is replaced; the supports given to `start` are always kept.
        """
        self._add_support(None, frame, mask)


class ClassesSession(_FrameStream):
    """One video segmented frame by frame for several classes at once (from `Predictor.start_classes`).

    As `Session`, but each frame's result is a dict {class name: FrameResult}, each exactly what
    a `Session` of that class alone gives: the backbone encodes each frame once for all classes
    (`models.VideoSegmenter.step_classes`), while supports, memory and reliable frames stay per
    class.
    """

    def __init__(self, predictor: PredictorParts, classes: Mapping[str, tuple], *,
                 return_probabilities: bool = False, keep_frames: bool = False):
        super().__init__(predictor, _checked_classes(classes), return_probabilities=return_probabilities,
                         keep_frames=keep_frames, label=lambda name: f"class {name!r}: ")

    @property
    def classes(self) -> tuple:
        return tuple(self._classes)

    @property
    def memory_pools(self) -> dict:
        """{class name: the reliable frames' encodings kept as its memory candidates}."""
        return {name: state.engine.memory_pool if state.engine is not None else []
                for name, state in self._classes.items()}

    def add_frame(self, frame: Any, name: str | None = None) -> list[dict[str, FrameResult]]:
        """The next frame (see `Session.add_frame`) -> per ready frame {class name: FrameResult}."""
        return self._add(frame, name)

    def flush(self) -> list[dict[str, FrameResult]]:
        """The results of the frames added since the last full clip (a shorter clip), or []."""
        return self._flush()

    def close(self) -> list[dict[str, FrameResult]]:
        """`flush()`, after which the session takes no more frames."""
        return self._close()

    def add_support(self, class_name: str, frame: Any, mask: Any) -> None:
        """Add an annotated frame of class `class_name` (see `Session.add_support`)."""
        if class_name not in self._classes:
            raise InputError(f"no class {class_name!r} in this session (its classes: "
                             f"{', '.join(map(repr, self._classes))})")
        self._add_support(class_name, frame, mask)


def _checked_classes(classes: Any) -> dict:
    """{name: (support_images, support_masks)}, at least one, names non-empty strings."""
    if not isinstance(classes, Mapping) or not classes:
        raise InputError(f"classes must be a non-empty dict {{class name: (support_images, support_masks)}}; "
                         f"got {type(classes).__name__}{' (empty)' if isinstance(classes, Mapping) else ''}")
    checked = {}
    for name, value in classes.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"class names must be non-empty strings; got {name!r}")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise InputError(f"class {name!r}: expected (support_images, support_masks), got "
                             f"{type(value).__name__}{f' of {len(value)}' if isinstance(value, (tuple, list)) else ''}")
        checked[name] = tuple(value)
    return checked
