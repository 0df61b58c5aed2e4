"""Frames/s of test.py's engine with K videos per forward pass (``test_video_batch``), float32 and bf16.

    python benchmarks/video_batch_speed.py --device cuda                       # 32 videos x 30 frames, 240x424, K = 1, 4, 16
    python benchmarks/video_batch_speed.py --device cpu --threads 1 --size 120 216 --videos 4 --frames 10 --batches 1 4

Synthetic videos (a bright moving ellipse in noise, 5 supports each; ``benchmarks/engine_speed.py``)
with memory on every clip (threshold 0: each clip after the first draws 5 memory frames), an
untrained model. Every (precision, K) pass segments all videos with
``VideoSegmenter.segment_many``; passes alternate and the median of ``--repeats`` is reported.
Each pass's masks are compared with K = 1 of the same precision (float32: expected identical up to
kernel rounding) and bf16's with float32's. Frames/s counts query frames (not supports).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.engine_speed import synchronize, synthetic_video  # noqa: E402
from models import QueryVideo, VIPMT, VideoSegmenter  # noqa: E402

DISTINCT_VIDEOS = 8        # videos beyond these repeat their content (with their own memory draws)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def make_videos(count: int, frames: int, size: tuple, device: torch.device) -> list:
    """``count`` videos [(frames [T,3,H,W], support_img [5,3,H,W], support_mask [5,1,H,W])] on ``device``."""
    distinct = [tuple(t.to(device) for t in synthetic_video(frames, 5, size=size, seed=seed))
                for seed in range(min(count, DISTINCT_VIDEOS))]
    return [distinct[i % len(distinct)] for i in range(count)]


def segment_all(segmenter: VideoSegmenter, videos: list, video_batch: int, device: torch.device):
    """({index: VideoPrediction}, seconds) for every video, ``video_batch`` per forward pass."""
    synchronize(device)
    started = time.perf_counter()
    jobs = (QueryVideo(*video, generator=torch.Generator().manual_seed(index), tag=index)
            for index, video in enumerate(videos))
    results = dict(segmenter.segment_many(jobs, video_batch))
    synchronize(device)
    return results, time.perf_counter() - started


def _differences(results: dict, reference: dict) -> dict:
    pixels = sum(int((results[i].pred != reference[i].pred).sum()) for i in reference)
    total = sum(reference[i].pred.numel() for i in reference)
    score = max(float((results[i].score - reference[i].score).abs().max()) for i in reference)
    return {"pixels_differing": pixels / total, "max_score_diff": score}


def measure(model: VIPMT, videos: list, batches, precisions, device: torch.device, repeats: int = 1) -> dict:
    """{"<precision> K=<k>": {frames_per_s, seconds, runs, vs_K1 (and bf16: vs_fp32)}} (medians of ``repeats``)."""
    frames = sum(len(v[0]) for v in videos)
    segmenters = {p: VideoSegmenter(model, memory_threshold=0.0, memory_size=5, autocast_dtype=PRECISIONS[p])
                  for p in precisions}
    for p in precisions:                                     # warm-up: kernels, allocator, autotuning
        segment_all(segmenters[p], videos[:max(batches)], max(batches), device)
    seconds, outputs = {}, {}
    for _ in range(repeats):
        for p in precisions:
            for k in batches:
                results, elapsed = segment_all(segmenters[p], videos, k, device)
                seconds.setdefault((p, k), []).append(elapsed)
                outputs[(p, k)] = results
    rows = {}
    for (p, k), runs in seconds.items():
        median = statistics.median(runs)
        row = {"precision": p, "K": k, "frames": frames, "seconds": round(median, 3),
               "frames_per_s": round(frames / median, 2), "runs": [round(s, 3) for s in runs]}
        if (p, 1) in outputs and k != 1:
            row["vs_K1"] = _differences(outputs[(p, k)], outputs[(p, 1)])
        if p != "fp32" and ("fp32", k) in outputs:
            row["vs_fp32"] = _differences(outputs[(p, k)], outputs[("fp32", k)])
        rows[f"{p} K={k}"] = row
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 424))
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=(1, 4, 16))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=tuple(args.size)).to(device).eval()
    videos = make_videos(args.videos, args.frames, tuple(args.size), device)
    rows = measure(model, videos, sorted(set(args.batches)), args.precisions, device, args.repeats)
    for name, row in rows.items():
        print(f"{name:>10}: {row['frames_per_s']:8.2f} frames/s ({row['seconds']} s for {row['frames']} frames; "
              f"runs {row['runs']})" + "".join(f"; {key}: {value['pixels_differing']:.6%} pixels, scores "
                                               f"{value['max_score_diff']:.1e}" for key, value in row.items()
                                               if key.startswith("vs_")))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
