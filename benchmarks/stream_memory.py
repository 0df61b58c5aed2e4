"""Resident memory of streaming a long video through `vipmt.Predictor`, against frames.

    python benchmarks/stream_memory.py                                    # 240x424 model, API default and 0
    python benchmarks/stream_memory.py --frames 2000 --model-size 64 64   # cheaper model, longer video
    python benchmarks/stream_memory.py --single --frames 150 --memory-pool-size 20 --model-size 64 64

The frames (1280x720 by default) are made on the fly by a generator (a bright square sliding
over a dark frame), so the video is never in memory unless the predictor keeps it. The model has
random weights and every frame is reliable (memory threshold 0), so every reliable frame is a
memory candidate: the worst case for `memory_pool_size=0` (the authors' pool, which grows by one
encoding per reliable frame). Each `--memory-pool-size` (default: the API's default
`predictor_memory_pool_size`, then 0) runs in its own process, since the peak RSS of a process
never goes down; a table of RSS (MB) against frames follows, and one JSON line per setting.

`--single` runs one setting in this process and prints its JSON line only: frames, seconds,
mask shapes, the pool's length and size (MB of tensors) at the end, the RSS (MB, /proc/self/status VmRSS) every `--every`
frames, and the peak RSS (ru_maxrss) once the predictor is ready, after `--warmup` frames and at
the end (tests/test_predictor.py reads it).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.config import DEFAULTS  # noqa: E402
from models import VIPMT  # noqa: E402
from utils.runtime import reuse_freed_memory  # noqa: E402
from vipmt import Predictor  # noqa: E402

BACKGROUND, OBJECT_RGB = 30, (230, 180, 60)


def frame_at(x: int, height: int, width: int) -> np.ndarray:
    """RGB uint8 [height, width, 3]: a square of a third of the height at column x."""
    side = height // 3
    frame = np.full((height, width, 3), BACKGROUND, np.uint8)
    frame[side:2 * side, x:x + side] = OBJECT_RGB
    return frame


def square_mask(x: int, height: int, width: int) -> np.ndarray:
    side = height // 3
    mask = np.zeros((height, width), np.uint8)
    mask[side:2 * side, x:x + side] = 1
    return mask


def rss_mb() -> float:
    """The current resident set size of this process (MB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")      # pragma: no cover - not Linux


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KB on Linux


def run_single(args: argparse.Namespace) -> dict:
    """Stream args.frames frames through one Predictor; the JSON report of `--single`."""
    torch.set_num_threads(args.threads)
    if args.reuse_freed_memory:
        reuse_freed_memory()
    torch.manual_seed(0)
    height, width = args.frame_size
    predictor = Predictor(VIPMT(backbone_weights=None, image_size=tuple(args.model_size)), memory_threshold=0.0,
                          memory_pool_size=args.memory_pool_size)
    travel = width - height // 3

    def frames():
        for t in range(args.frames):
            yield frame_at((t * 7) % travel, height, width)

    session = predictor.start([frame_at(travel // 2, height, width)], [square_mask(travel // 2, height, width)])
    report = {"memory_pool_size": args.memory_pool_size, "model_size": list(args.model_size), "frames": 0,
              "mask_shapes": [], "rss_mb": {}, "peak_rss_mb": {"ready": round(peak_rss_mb(), 1)}}
    start = time.perf_counter()
    for frame in frames():
        for result in session.add_frame(frame):
            report["frames"] += 1
            if list(result.mask.shape) not in report["mask_shapes"]:
                report["mask_shapes"].append(list(result.mask.shape))
            if report["frames"] % args.every == 0:
                report["rss_mb"][report["frames"]] = round(rss_mb(), 1)
            if report["frames"] == args.warmup:
                report["peak_rss_mb"]["warm"] = round(peak_rss_mb(), 1)
    report["frames"] += len(session.flush())
    report["pool_length"] = len(session.memory_pool)
    report["pool_mb"] = round(sum(t.numel() * t.element_size() for frame in session.memory_pool
                                  for t in vars(frame).values()) / 2 ** 20, 1)
    report["peak_rss_mb"]["end"] = round(peak_rss_mb(), 1)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--model-size", type=int, nargs=2, default=[240, 424], metavar=("H", "W"))
    parser.add_argument("--frame-size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    parser.add_argument("--memory-pool-size", type=int, action="append",
                        help=f"repeatable (default: {DEFAULTS.predictor_memory_pool_size}, the API's, and 0)")
    parser.add_argument("--every", type=int, default=50, help="an RSS reading every N frames")
    parser.add_argument("--warmup", type=int, default=100, help="frames before the 'warm' peak RSS reading")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--single", action="store_true", help="one setting in this process, JSON only")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="glibc keeps freed blocks (as predict.py): RSS then follows what is held, less "
                             "what the allocator happened to return")
    args = parser.parse_args()
    pool_sizes = args.memory_pool_size or [DEFAULTS.predictor_memory_pool_size, 0]
    if args.single:
        args.memory_pool_size = pool_sizes[0]
        print(json.dumps(run_single(args)))
        return
    reports = []
    for pool in pool_sizes:
        command = [sys.executable, __file__, "--single", "--memory-pool-size", str(pool), "--frames", str(args.frames),
                   "--model-size", *map(str, args.model_size), "--frame-size", *map(str, args.frame_size),
                   "--every", str(args.every), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   *(["--reuse-freed-memory"] if args.reuse_freed_memory else [])]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("frames  " + "  ".join(f"pool={r['memory_pool_size']:<6}" for r in reports) + "   (RSS, MB)")
    for frames in reports[0]["rss_mb"]:
        print(f"{frames:>6}  " + "  ".join(f"{r['rss_mb'].get(frames, float('nan')):>11.0f}" for r in reports))
    for report in reports:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
