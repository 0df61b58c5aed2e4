"""Segment an object class in any video, given 1-5 annotated support images: the Python API.

    from vipmt import Predictor

    predictor = Predictor.from_checkpoint("runs/youtube_vis_group1/best.pth")     # device="auto"
    for result in predictor.segment("my_video.mp4", ["cat1.jpg", "cat2.jpg"], ["cat1.png", "cat2.png"]):
        print(result.index, result.score, result.mask.shape)   # mask: uint8 0/1 at the frame's size

The video is read, segmented and handed back one clip at a time (`models.VideoSession`): memory
holds the current clip, the supports' encoding and the memory frames' encodings, never the
whole video; the memory pool keeps the 256 most recent reliable frames by default
(`memory_pool_size`, 0 = the authors' unbounded pool). `Predictor.start` gives a `Session` that
takes one frame at a time and accepts annotated corrections; `segment_many` runs several videos. Frames are letterboxed to the model's input size with the dataset's
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
from models import VIPMT, SupportEncoding, VideoSegmenter, VideoSession
from utils.runtime import log_bf16_advice, resolve_device
from utils.video import VideoReader

from .inputs import MAX_SUPPORTS, InputError, _check_rgb, _is_path, prepare_supports, read_image
from .loading import load_trained_model

__all__ = ["Predictor", "Session", "FrameResult", "InputError", "VideoSource", "open_video", "prepare_supports",
           "read_image", "unletterbox"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FRAME_FOLDER_FPS = 10.0      # frame rate reported for a folder of frames (it has none of its own)


@dataclass
class FrameResult:
    """The prediction for one video frame."""
    index: int                  # position in the video, from 0
    name: str | None            # file name without extension (frame folders), "00042" (video files), else None
    mask: np.ndarray            # uint8 [h, w] at the frame's original size, 1 = object
    score: float                # predicted IoU of the mask (the model's confidence in it)
    frame: np.ndarray | None = None   # the RGB frame [h, w, 3] when segment(..., keep_frames=True)
    # with return_probabilities=True: float16 [h, w], the softmax foreground probability before
    # the threshold (mask == (probability > 0.5)), mapped to the frame's size as the mask is
    probability: np.ndarray | None = None


# ------------------------------------------------------------------ videos
class VideoSource:
    """A video read one frame at a time.

    video: a video file (anything OpenCV reads), a folder of frame images (sorted by name), an
    array [T, h, w, 3] or an iterable of RGB uint8 frames [h, w, 3] (e.g. a generator). Every frame
    must have the first frame's size. `fps` and `length` are None where the source does not say.
    A video file that ends before the frame count it declares raises VideoTruncatedError (a
    UserError) after its last
    frame, unless allow_truncated (then `truncation` says how many frames were read); a folder
    with two frames named alike but for the extension is refused.
    """

    def __init__(self, video: Any, *, allow_truncated: bool = False):
        self.fps: float | None = None
        self.length: int | None = None
        self._path = self._names = self._frames = self._reader = None
        if _is_path(video):
            self._path = os.fspath(video)
            if os.path.isdir(self._path):
                self._names = sorted(f for f in os.listdir(self._path) if f.lower().endswith(FRAME_EXTENSIONS))
                if not self._names:
                    raise InputError(f"folder {self._path!r} has no frames ({', '.join(FRAME_EXTENSIONS)})")
                _refuse_same_stems(self._path, self._names)
                self.fps, self.length = FRAME_FOLDER_FPS, len(self._names)
            elif os.path.isfile(self._path):
                capture = cv2.VideoCapture(self._path)
                self.fps = float(capture.get(cv2.CAP_PROP_FPS) or FRAME_FOLDER_FPS)
                self.length = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None    # an estimate for some formats
                capture.release()
                # allow_truncated: keep the frames before a cut or an undecodable frame (else an error)
                self._reader = VideoReader(self._path, allow_truncated=allow_truncated)
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
            for index, frame in enumerate(self._reader):
                yield f"{index:05d}", f"frame {index} of {self._path!r}", frame
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


    @property
    def truncation(self) -> dict | None:
        """{'declared_frames', 'frames_read'} of a video file read only in part (allow_truncated), else None."""
        if self._reader is None or not self._reader.truncated:
            return None
        return {"declared_frames": self._reader.declared_frames, "frames_read": self._reader.frames_read}


def _refuse_same_stems(folder: str, names: list) -> None:
    """Frames named alike but for the extension (a.jpg, a.png) would write one mask file: refused."""
    by_stem: dict = {}
    for name in names:
        by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
    clashes = [group for group in by_stem.values() if len(group) > 1]
    if clashes:
        listed = "; ".join(", ".join(group) for group in clashes[:5])
        raise InputError(f"folder {folder!r} has {len(clashes)} frame name(s) that differ only in the extension "
                         f"({listed}{'; ...' if len(clashes) > 5 else ''}): their masks would be written to one "
                         f"file. Keep one file per frame name")


def open_video(video: Any, *, allow_truncated: bool = False) -> VideoSource:
    """`VideoSource(video, allow_truncated=...)`, or `video` itself if it already is one."""
    return video if isinstance(video, VideoSource) else VideoSource(video, allow_truncated=allow_truncated)


def _check_letterbox_fits(shape: tuple, image_size: tuple, label: str) -> None:
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


# ------------------------------------------------------------------ the predictor
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


class Session:
    """One video segmented frame by frame (from `Predictor.start`): push frames, get results.

        session = predictor.start(support_images, support_masks)
        for frame in camera:                          # RGB uint8 [h, w, 3]
            for result in session.add_frame(frame):   # a clip's worth of FrameResults, or []
                ...
        results = session.flush()                     # the frames of the last, shorter clip

    Frames are segmented a clip (`clip_length` frames) at a time, exactly as `Predictor.segment`
    does (which is written on this class): `add_frame` returns [] until a clip is full, then the
    clip's results. `add_support(frame, mask)` adds an annotated frame (e.g. a corrected mask) as
    a support of every clip that starts after the call; frames already added keep their results.
    """

    def __init__(self, predictor: "Predictor", support_images: Any, support_masks: Any, *,
                 return_probabilities: bool = False, keep_frames: bool = False):
        images, masks = prepare_supports(support_images, support_masks)
        for i, image in enumerate(images):
            _check_letterbox_fits(image.shape, predictor.image_size, f"support image {i + 1}")
        self.predictor = predictor
        self.return_probabilities = return_probabilities
        self.keep_frames = keep_frames
        self._supports = predictor.transform(images, masks)     # (images [S,3,H,W], masks [S,1,H,W])
        self._initial_count = len(images)
        self._corrections: list = []       # encodings of the added supports, oldest first
        self._pending: list = []           # (first clip number it applies to, images [1,3,H,W], masks [1,1,H,W])
        self._clips_done = 0
        self._engine: VideoSession | None = None
        self._clip: list = []              # [(index, name, frame)] of the clip being filled
        self._frames_added = 0
        self._first_shape: tuple | None = None

    @property
    def frames_added(self) -> int:
        return self._frames_added

    @property
    def memory_pool(self) -> list:
        """The reliable frames' encodings kept as memory candidates (`models.engine.MemoryFrame`)."""
        return self._engine.memory_pool if self._engine is not None else []

    def add_frame(self, frame: Any, name: str | None = None) -> list[FrameResult]:
        """The next frame of the video (RGB uint8 [h, w, 3], of the first frame's size) -> the
        FrameResults that became ready: the whole clip once it is full, else []."""
        index = self._frames_added
        frame = _check_rgb(frame, f"frame {index}")
        if self._first_shape is None:
            self._first_shape = frame.shape
        elif frame.shape != self._first_shape:
            raise InputError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                             f"{self._first_shape[1]}x{self._first_shape[0]}; all frames of a video must have one size")
        return self._add_checked(frame, name)

    def _add_checked(self, frame: np.ndarray, name: str | None) -> list[FrameResult]:
        self._clip.append((self._frames_added, name, frame))
        self._frames_added += 1
        if len(self._clip) < self.predictor.segmenter.clip_length:
            return []
        return self._segment_clip()

    def flush(self) -> list[FrameResult]:
        """The results of the frames added since the last full clip (a shorter clip), or []."""
        return self._segment_clip() if self._clip else []

    def add_support(self, frame: Any, mask: Any) -> None:
        """Add an annotated frame (RGB uint8 [h, w, 3] or a path) with its mask ([h, w] 0/1 or
        0/255, or a PNG path) as a support of every clip that starts after this call.

        At most 5 supports are used (the model's number of shots): beyond that the oldest added
        support is replaced; the supports given to `start` are always kept.
        """
        room = MAX_SUPPORTS - self._initial_count
        if room <= 0:
            raise InputError(f"this session already has {self._initial_count} supports, the most the model uses; "
                             f"start the session with fewer supports to leave room for added ones")
        images, masks = prepare_supports([frame], [mask])
        # a clip being filled holds frames added before this call: the clip after it is the first to use it
        first_clip = self._clips_done + (1 if self._clip else 0)
        self._pending.append((first_clip, *self.predictor.transform(images, masks)))

    def _segment_clip(self) -> list[FrameResult]:
        clip, self._clip = self._clip, []
        segmenter = self.predictor.segmenter
        if self._engine is None:      # supports are encoded once a clip is read: bad frames fail before model work
            self._engine = segmenter.start(*self._supports, generator=torch.Generator().manual_seed(self.predictor.seed))
        number, self._clips_done = self._clips_done, self._clips_done + 1
        due = [p for p in self._pending if p[0] <= number]
        if due:
            self._pending = [p for p in self._pending if p[0] > number]
            self._corrections += [segmenter.encode_supports(image, mask) for _, image, mask in due]
            del self._corrections[:-(MAX_SUPPORTS - self._initial_count)]
            initial = self._engine.supports.select(list(range(self._initial_count)))
            self._engine.supports = SupportEncoding.cat([initial, *self._corrections])
        frames = [frame for _, _, frame in clip]
        _check_letterbox_fits(frames[0].shape, self.predictor.image_size,        # one size per video
                              f"video frame {clip[0][1] or clip[0][0]}")
        no_mask = np.zeros(frames[0].shape[:2], np.uint8)      # the transform letterboxes masks too
        images, _ = self.predictor.transform(frames, [no_mask] * len(frames))
        step = self._engine.step(images, probabilities=self.return_probabilities)
        results = []
        for t, (index, name, frame) in enumerate(clip):
            mask = unletterbox(step.pred[t].numpy(), frame.shape[:2])
            probability = (_probability_map(step.probability[t].numpy(), mask, frame.shape[:2])
                           if self.return_probabilities else None)
            results.append(FrameResult(index=index, name=name, mask=mask, score=float(step.score[t]),
                                       frame=frame if self.keep_frames else None, probability=probability))
        return results


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
        have no config). trusted: allow pickled objects (files you trust only). The other
        arguments are the constructor's; `settings()` lists what was used.
        """
        device = device if isinstance(device, torch.device) else resolve_device(
            str(device), advice="use device='cpu', or device='auto' (CUDA when available, else the CPU)")
        loaded = load_trained_model(path, device=device, image_size=image_size, trusted=trusted)
        saved = loaded.config or {}

        def chosen(key, given):
            return given if given is not None else saved.get(key, DEFAULTS[key])

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

    def segment(self, video: Any, support_images: Any, support_masks: Any, *, keep_frames: bool = False,
                return_probabilities: bool = False) -> Iterator[FrameResult]:
        """Segment `video` frame by frame; yields a FrameResult per frame, one clip at a time.

        video: a path (video file, or a folder of frames sorted by name), an array [T, h, w, 3], an
        iterable of RGB uint8 frames [h, w, 3] or a `VideoSource`. support_images / support_masks:
        see `prepare_supports` (1 to 5). keep_frames: also hand back each frame (for overlays).
        return_probabilities: also hand back `FrameResult.probability`, the foreground
        probability (float16 [h, w]) that the mask thresholds at 0.5. The supports and the video
        source are checked here; a bad frame raises InputError when the iteration reaches it.
        """
        session = self.start(support_images, support_masks, return_probabilities=return_probabilities,
                             keep_frames=keep_frames)
        return self._stream(open_video(video), session)

    @staticmethod
    def _stream(source: VideoSource, session: Session) -> Iterator[FrameResult]:
        for name, frame in source:          # checked by the source, with its own labels
            yield from session._add_checked(frame, name)
        yield from session.flush()

    def segment_many(self, videos: Sequence[Any], support_images: Any, support_masks: Any, *,
                     keep_frames: bool = False, return_probabilities: bool = False
                     ) -> Iterator[tuple[int, FrameResult]]:
        """Segment several videos; yields (video index, FrameResult), each video's frames in order.

        support_images / support_masks: one set for all videos (as in `segment`), or a list of
        sets, one per video. Every video starts from `seed`, so each video's results are exactly
        `segment`'s for it. The videos are segmented one after the other (the engine has no
        batched path over videos yet). All supports and video sources are checked before any
        work starts.
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
