"""Frames per second of the video engine vs the authors' clip-by-clip test loop.

Every path segments the same synthetic 30-frame video with 5 supports at 240x424 with memory
on every clip after the first (threshold 0 makes every frame reliable, so each clip gets 5
memory frames), in one process, alternating, and the median of --repeats runs is reported.

* authors' loop: the authors' protocol (every clip re-encodes the supports and the memory
  frames from images) with the authors' arithmetic (benchmarks/authors_loop.py);
* recompute: the same protocol with our model's arithmetic (benchmarks/recompute.py);
* engine: `VideoSegmenter`, every frame's backbone features computed once.

    python benchmarks/engine_speed.py                    # CPU, float32
    python benchmarks/engine_speed.py --reuse-freed-memory --skip authors recompute   # as test.py runs
    python benchmarks/engine_speed.py --device cuda --bf16
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.authors_loop import authors_computation  # noqa: E402
from benchmarks.recompute import segment_video_recompute  # noqa: E402
from models import VIPMT, VideoSegmenter  # noqa: E402
from utils.runtime import reuse_freed_memory  # noqa: E402

IMAGE_SIZE = (240, 424)
AUTHORS = "authors' loop (their arithmetic)"
RECOMPUTE = "recompute (authors' protocol, our arithmetic)"


def synthetic_video(frames: int, shots: int, size=IMAGE_SIZE, seed: int = 0):
    """Noise frames with a bright moving ellipse; supports with their masks."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")

    def clip(n, offset):
        masks = torch.stack([(((ys - h / 2) / (h / 5)) ** 2 + ((xs - w / 4 - 4 * (t + offset)) / (w / 8)) ** 2 <= 1)
                             for t in range(n)]).float()[:, None]
        return torch.randn(n, 3, h, w, generator=g) + 1.5 * masks, masks

    query, _ = clip(frames, 0)
    support_img, support_mask = clip(shots, 40)
    return query, support_img, support_mask


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_paths(model, frames, support_img, support_mask, bf16: bool) -> dict:
    options = dict(memory_threshold=0.0, memory_size=5)

    def recompute():
        return segment_video_recompute(model, frames, support_img, support_mask,
                                       generator=torch.Generator().manual_seed(0), **options)

    def authors():
        with authors_computation():
            return recompute()

    def engine(dtype=None):
        return VideoSegmenter(model, autocast_dtype=dtype, **options).segment(
            frames, support_img, support_mask, generator=torch.Generator().manual_seed(0))

    paths = {AUTHORS: authors, RECOMPUTE: recompute, "engine fp32": engine}
    if bf16:
        paths["engine bf16 autocast"] = lambda: engine(torch.bfloat16)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time the engine with bfloat16 autocast")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="keep freed buffers for reuse as test.py / predict.py do (affects every path)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["authors", "recompute"],
                        help="leave out slow baselines (the speed-up column then uses the first path timed)")
    args = parser.parse_args()
    if args.reuse_freed_memory and not reuse_freed_memory():
        parser.error("--reuse-freed-memory needs glibc")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=IMAGE_SIZE).to(device).eval()
    frames, support_img, support_mask = (t.to(device) for t in synthetic_video(args.frames, 5))
    skipped = {AUTHORS: "authors" in args.skip, RECOMPUTE: "recompute" in args.skip}
    paths = {name: run for name, run in make_paths(model, frames, support_img, support_mask, args.bf16).items()
             if not skipped.get(name)}
    for name, run in make_paths(model, frames[:2], support_img, support_mask, args.bf16).items():
        if not skipped.get(name):
            run()                               # warm-up on a short video
    times = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.repeats):
        for name, run in paths.items():
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)

    base_name = next(iter(paths))
    reference = outputs[base_name]
    base = statistics.median(times[base_name])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{args.frames} frames, 5 supports, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, memory on every clip; "
          f"{device.type} ({where}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"median of {args.repeats}{', freed memory reused' if args.reuse_freed_memory else ''}")
    print(f"| path | s / video | frames / s | speed-up | pixels differing from {base_name} | max score diff |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        out = outputs[name]
        differing = (out.pred != reference.pred).float().mean().item()
        score_diff = (out.score - reference.score).abs().max().item()
        print(f"| {name} | {median:.2f} | {args.frames / median:.2f} | {base / median:.2f}x | "
              f"{differing:.4%} | {score_diff:.1e} |")


if __name__ == "__main__":
    main()
