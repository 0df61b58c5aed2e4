"""Videos for the Predictor: a file, a folder of frames, an array or any iterable of frames,
read one frame at a time and checked (every frame RGB uint8, of the first frame's size)."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np
import torch

from utils.fileio import unreadable_reason
from utils.video import VideoReader, VideoTruncatedError

from .errors import InputError, TruncatedVideoError
from .inputs import _is_path, as_rgb_frame, read_image

__all__ = ["FRAME_EXTENSIONS", "VideoSource", "open_video"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FRAME_FOLDER_FPS = 10.0      # frame rate reported for a folder of frames (it has none of its own)


class VideoSource:
    """A video read one frame at a time.

    video: a video file (anything OpenCV reads), a folder of frame images (sorted by name), an
    array [T, h, w, 3], a torch tensor [T, 3, h, w] or [T, h, w, 3], or an iterable of RGB uint8
    frames [h, w, 3] (e.g. a generator; torch frames also [3, h, w]). Every frame must have the
    first frame's size. `fps` and `length` are None where the source does not say. A video file
    that ends before the frame count it declares raises TruncatedVideoError after its last
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
                raise InputError(f"video {self._path!r} {unreadable_reason(self._path) or 'cannot be read'} (give a "
                                 f"video file or a folder of frames)")
        elif isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise InputError(f"a video array must be RGB uint8 [T, h, w, 3]; got {video.dtype} {list(video.shape)}")
            self._frames, self.length = video, len(video)
        elif isinstance(video, torch.Tensor):
            if video.dim() != 4:
                raise InputError(f"a video tensor must be RGB uint8 [T, 3, h, w] or [T, h, w, 3]; got {video.dtype} "
                                 f"{list(video.shape)}")
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
            try:
                for index, frame in enumerate(self._reader):
                    yield f"{index:05d}", f"frame {index} of {self._path!r}", frame
            except VideoTruncatedError as error:
                raise TruncatedVideoError(f"{error} (Python API: open_video(video, allow_truncated=True))") from None
        else:
            for index, frame in enumerate(self._frames):
                yield None, f"video frame {index}", frame

    def __iter__(self) -> Iterator[tuple[str | None, np.ndarray]]:
        """(name, RGB uint8 frame [h, w, 3]) in order."""
        first_shape = None
        for name, label, frame in self._raw():
            frame = as_rgb_frame(frame, label)
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
