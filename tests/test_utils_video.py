"""H.264 MP4 output: the codec, pixel format, frame count and size read back, atomic writes."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest

from utils.video import VideoWriter, even_size


def moving_square(height: int, width: int, count: int) -> list:
    frames = []
    for t in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        frame[(4 * t) % height:][:12, 8:32] = (0, 255, 0)
        frames.append(frame)
    return frames


def read_back(path: str):
    with av.open(path) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, stream.codec_context.height,
                stream.codec_context.width, float(stream.average_rate))
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return info, frames


def test_h264_yuv420p_with_every_frame_and_odd_sides_padded(tmp_path):
    frames = moving_square(65, 97, 10)
    path = str(tmp_path / "overlay.mp4")
    with VideoWriter.open(path, fps=12, size=(65, 97)) as video:
        for frame in frames:
            video.write(frame)
    assert os.listdir(tmp_path) == ["overlay.mp4"]
    (codec, pix_fmt, height, width, fps), decoded = read_back(path)
    assert (codec, pix_fmt, height, width, fps) == ("h264", "yuv420p", 66, 98, 12.0)
    assert len(decoded) == 10 and decoded[0].shape == (66, 98, 3)
    for original, back in zip(frames, decoded):            # lossy, but the same picture
        assert np.abs(back[:65, :97].astype(int) - original).mean() < 4
    padded = decoded[5].astype(int)                        # the extra row / column repeat the last ones
    assert np.abs(padded[65] - padded[64]).mean() < 4 and np.abs(padded[:, 97] - padded[:, 96]).mean() < 4
    with open(path, "rb") as f:
        head = f.read(8192)
    assert head[4:8] == b"ftyp" and b"moov" in head          # index at the front: plays while loading


def test_even_sizes_are_kept_and_fractional_fps():
    assert even_size(240, 424) == (240, 424) and even_size(481, 853) == (482, 854)


def test_nothing_reaches_the_path_until_close_and_abort_keeps_the_old_file(tmp_path):
    path = tmp_path / "overlay.mp4"
    path.write_bytes(b"previous video")
    video = VideoWriter.open(str(path), fps=30000 / 1001, size=(64, 64))
    for frame in moving_square(64, 64, 60) * 2:        # past x264's look-ahead: packets are written
        video.write(frame)
    assert path.read_bytes() == b"previous video"
    temporary = [name for name in os.listdir(tmp_path) if name != "overlay.mp4"]
    assert len(temporary) == 1 and temporary[0].startswith(".overlay.mp4.tmp")
    assert os.path.getsize(tmp_path / temporary[0]) > 0
    video.abort()
    assert path.read_bytes() == b"previous video" and os.listdir(tmp_path) == ["overlay.mp4"]
    with pytest.raises(RuntimeError, match="stop"):
        with VideoWriter.open(str(path), fps=5, size=(64, 64)) as video:
            video.write(moving_square(64, 64, 1)[0])
            raise RuntimeError("stop")
    assert path.read_bytes() == b"previous video" and os.listdir(tmp_path) == ["overlay.mp4"]
    with VideoWriter.open(str(path), fps=30000 / 1001, size=(64, 64)) as video:
        video.write(moving_square(64, 64, 1)[0])
    (codec, _, _, _, fps), decoded = read_back(str(path))
    assert codec == "h264" and len(decoded) == 1 and abs(fps - 29.97) < 0.01


def test_wrong_frames_are_refused(tmp_path):
    with VideoWriter.open(str(tmp_path / "v.mp4"), fps=10, size=(64, 64)) as video:
        with pytest.raises(ValueError, match=r"expected a uint8 frame of shape \(64, 64, 3\)"):
            video.write(np.zeros((64, 64, 3), np.float32))
        with pytest.raises(ValueError, match="got uint8 \\(64, 66, 3\\)"):
            video.write(np.zeros((64, 66, 3), np.uint8))
        video.write(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="closed"):
        video.write(np.zeros((64, 64, 3), np.uint8))
