"""Peak memory of streaming a long 1920x1080 video through `vipmt.Predictor`.

    python benchmarks/stream_memory.py                          # 2,000 frames: 12.4 GB of frames
    python benchmarks/stream_memory.py --frames 150 --warmup 50 # what tests/test_predictor.py runs

The frames are made on the fly by a generator (a bright square sliding over a dark frame), so
the video is never in memory unless the predictor keeps it. The model has random weights at the
smallest input size, 64x64, and every frame is reliable (threshold 0), so every clip after the
first draws memory frames; `--memory-pool-size` bounds the memory pool (0: the authors' pool of
every reliable frame). Prints one JSON line: frames, seconds, and the peak RSS (ru_maxrss, MB)
once the predictor is ready, after `--warmup` frames and at the end.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import VIPMT  # noqa: E402
from vipmt import Predictor  # noqa: E402

HEIGHT, WIDTH = 1080, 1920
MODEL_SIZE = (64, 64)
BACKGROUND, OBJECT_RGB, SQUARE = 30, (230, 180, 60), 400


def frame_at(x: int) -> np.ndarray:
    frame = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    frame[300:300 + SQUARE, x:x + SQUARE] = OBJECT_RGB
    return frame


def frames(count: int):
    for t in range(count):
        yield frame_at((t * 7) % (WIDTH - SQUARE))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100, help="frames before the second RSS reading")
    parser.add_argument("--memory-pool-size", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    predictor = Predictor(VIPMT(backbone_weights=None, image_size=MODEL_SIZE), memory_threshold=0.0,
                          memory_pool_size=args.memory_pool_size)
    support = frame_at(500)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[300:300 + SQUARE, 500:500 + SQUARE] = 1
    report = {"frames": 0, "mask_shapes": [], "peak_rss_mb": {"ready": peak_rss_mb()}}
    start = time.perf_counter()
    for result in predictor.segment(frames(args.frames), [support], [mask]):
        report["frames"] += 1
        if list(result.mask.shape) not in report["mask_shapes"]:
            report["mask_shapes"].append(list(result.mask.shape))
        if report["frames"] == args.warmup:
            report["peak_rss_mb"]["warm"] = peak_rss_mb()
    report["peak_rss_mb"]["end"] = peak_rss_mb()
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["video_gb"] = round(args.frames * HEIGHT * WIDTH * 3 / 1e9, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
