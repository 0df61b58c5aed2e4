"""MP4 videos that browsers and notebooks play: H.264 (libx264), yuv420p, written atomically;
and video files read to their declared end (:class:`VideoReader`: a truncated file is an error).

    with VideoWriter.open("overlay.mp4", fps=24, size=(480, 854)) as video:
        for frame in frames:                      # uint8 [H, W, 3] RGB
            video.write(frame)
    # or: video = VideoWriter.open(...); video.write(...); video.close()  (video.abort() on error)

OpenCV's ``mp4v`` (MPEG-4 Part 2) files do not play in browsers or in Jupyter's ``<video>``;
H.264 in yuv420p with the index at the front (``faststart``) does. The encoder is PyAV's bundled
FFmpeg + libx264 (the ``av`` package), so no system ffmpeg is needed.

yuv420p stores colour at half resolution, so both sides must be even: a frame with an odd
height or width is padded by one row at the bottom / one column at the right, repeating the
last row / column (no pixel of the frame is lost; the video is 1 pixel taller / wider).

Atomic like :mod:`utils.fileio`: frames go to a hidden temporary file next to ``path`` (the
same ``.<name>.tmp<pid>_<hex>`` name, so :func:`utils.runlock.remove_stale_temporaries` cleans
up after a kill -9), which is renamed onto ``path`` by :meth:`VideoWriter.close`. Until then
``path`` keeps its previous content (or does not exist); :meth:`VideoWriter.abort` removes the
temporary file.
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from .fileio import _fsync_directory, _temp_path
from .runtime import UserError

logger = logging.getLogger(__name__)

__all__ = ["VideoWriter", "VideoReader", "VideoTruncatedError", "declared_frame_count", "CODEC", "PIXEL_FORMAT",
           "even_size"]

CODEC = "libx264"                 # H.264 encoder (the stream's codec name reads back as 'h264')
PIXEL_FORMAT = "yuv420p"          # the only H.264 format every browser decodes
DEFAULT_CRF = 20                  # x264 constant quality: 0 lossless .. 51 worst; 18-23 look clean
DEFAULT_PRESET = "medium"
MAX_FPS_DENOMINATOR = 1001        # 29.97 fps = 30000/1001


def even_size(height: int, width: int) -> Tuple[int, int]:
    """The video's size for frames of ``height`` x ``width`` (odd sides grow by one)."""
    return height + height % 2, width + width % 2


class VideoWriter:
    """Streaming H.264 MP4 writer; see the module docstring. Use :meth:`open`."""

    def __init__(self, path: str, fps: float, size: Sequence[int], *, crf: int = DEFAULT_CRF,
                 preset: str = DEFAULT_PRESET):
        import av  # noqa: WPS433 - imported on use: only video output needs it

        height, width = (int(s) for s in size)
        if height < 1 or width < 1:
            raise ValueError(f"VideoWriter: frame size must be positive, got {height}x{width}")
        if not fps > 0:
            raise ValueError(f"VideoWriter: fps must be > 0, got {fps}")
        self.path = os.fspath(path)
        self.frame_size = (height, width)              # frames given to write()
        self.size = even_size(height, width)           # frames in the file
        self.frames_written = 0
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._directory = directory
        self._temp = _temp_path(directory, os.path.basename(self.path))
        self._av = av
        self._container = None
        try:
            # The temporary name has no .mp4 extension: the container format is given explicitly.
            self._container = av.open(self._temp, mode="w", format="mp4", options={"movflags": "+faststart"})
            self._stream = self._container.add_stream(
                CODEC, rate=Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR))
            self._stream.height, self._stream.width = self.size
            self._stream.pix_fmt = PIXEL_FORMAT
            self._stream.options = {"crf": str(int(crf)), "preset": preset}
        except BaseException:
            self.abort()
            raise

    @classmethod
    def open(cls, path: str, fps: float, size: Sequence[int], **options) -> "VideoWriter":
        """A writer of ``size`` = (H, W) RGB frames at ``fps`` frames per second into ``path``."""
        return cls(path, fps, size, **options)

    @property
    def closed(self) -> bool:
        return self._container is None

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one frame: ``uint8 [H, W, 3]`` RGB of the size given to :meth:`open`."""
        if self.closed:
            raise ValueError(f"VideoWriter({self.path!r}) is closed")
        frame_rgb = np.asarray(frame_rgb)
        if frame_rgb.dtype != np.uint8 or frame_rgb.shape != (*self.frame_size, 3):
            raise ValueError(f"VideoWriter({self.path!r}): expected a uint8 frame of shape "
                             f"{(*self.frame_size, 3)}, got {frame_rgb.dtype} {frame_rgb.shape}")
        pad = (self.size[0] - self.frame_size[0], self.size[1] - self.frame_size[1])
        if any(pad):
            frame_rgb = np.pad(frame_rgb, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> str:
        """Finish the file and move it onto ``path`` atomically; returns ``path``."""
        if self.closed:
            return self.path
        try:
            for packet in self._stream.encode(None):          # flush the encoder's delayed frames
                self._container.mux(packet)
            self._container.close()                           # writes the index (faststart: at the front)
            self._container = None
            with open(self._temp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._temp, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_directory(self._directory)
        return self.path

    def abort(self) -> None:
        """Stop without touching ``path``; the temporary file is removed. Idempotent."""
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the file is discarded anyway
                pass
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # an abandoned writer leaves no temporary file behind
        if getattr(self, "_container", None) is not None:
            self.abort()

    def __repr__(self) -> str:
        return (f"VideoWriter({self.path!r}, size={self.size[0]}x{self.size[1]}, "
                f"frames={self.frames_written}, closed={self.closed})")


# ---------------------------------------------------------------------------- reading
class VideoTruncatedError(UserError):
    """A video file that ends (or stops decoding) before the frame count its index declares."""


def declared_frame_count(path: str) -> Optional[int]:
    """The number of frames the container's index declares (MP4/MOV, AVI), or None where the
    container declares none (Matroska/WebM, raw streams) or cannot be opened."""
    import av  # noqa: WPS433 - imported on use

    try:
        with av.open(os.fspath(path)) as container:
            streams = container.streams.video
            return int(streams[0].frames) or None if streams else None
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader itself
        return None


class VideoReader:
    """RGB uint8 frames ``[h, w, 3]`` of a video file, decoded by OpenCV, read to the declared end.

    OpenCV's reader stops without a word where a file was cut short or a frame fails to decode;
    so after the last frame, fewer frames than the container declares is a
    :class:`VideoTruncatedError` (a UserError: exit 2), unless ``allow_truncated`` (then it is
    logged, and :attr:`truncated` says so). ``declared_frames`` is None where the container
    declares no count (nothing to compare with).
    """

    def __init__(self, path: str, *, allow_truncated: bool = False):
        self.path = os.fspath(path)
        self.allow_truncated = allow_truncated
        self.declared_frames = declared_frame_count(self.path)
        self.frames_read = 0

    @property
    def truncated(self) -> bool:
        return self.declared_frames is not None and self.frames_read < self.declared_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2  # noqa: WPS433

        capture = cv2.VideoCapture(self.path)
        self.frames_read = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                self.frames_read += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
        if self.truncated and self.frames_read > 0:
            message = (f"video {self.path!r} ends after {self.frames_read} of the {self.declared_frames} frames "
                       f"its index declares (the file is cut short, or frame {self.frames_read} does not decode)")
            if not self.allow_truncated:
                raise VideoTruncatedError(f"{message}; nothing was written. Pass --allow-truncated to keep the "
                                          f"{self.frames_read} frames that were read.")
            logger.warning("%s; keeping the %d frames read (--allow-truncated)", message, self.frames_read)
