"""Segment an object class in your own video, given 1-5 annotated support images.

    python predict.py --checkpoint runs/youtube_vis_group1/best.pth \\
        --video my_video.mp4 \\
        --support-images cat1.jpg cat2.jpg --support-masks cat1.png cat2.png \\
        --output outputs/my_video

The video is a video file (anything OpenCV reads) or a folder of frames (sorted by name), of
any length: it is read, segmented and written clip by clip (`vipmt.Predictor`). Support masks
are PNGs of the support images' size, 0/255 or 0/1 (object = nonzero). Frames are letterboxed
to the model's input size, segmented with reliable memory, and the masks are mapped back to the
original resolution.

Writes into --output: masks/<frame>.png (0/255, original size), overlay.mp4 (object in red) and
predictions.json (per-frame predicted IoU score and object fraction).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from config.config import DEFAULTS
from utils.fileio import atomic_write_json, unwritable_reason
from utils.runtime import UserError, resolve_device, reuse_freed_memory
from utils.video import VideoWriter
from utils.visualize import tint
from vipmt.cli import run
from vipmt.predictor import FrameResult, Predictor, open_video, prepare_supports

logger = logging.getLogger("predict")

OVERLAY_COLOR_RGB = (255, 0, 0)   # red


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="trained weights: our checkpoint or the authors' {'state_dict': ...} file")
    parser.add_argument("--video", required=True, metavar="PATH", help="video file or folder of frames")
    parser.add_argument("--support-images", nargs="+", required=True, metavar="IMG")
    parser.add_argument("--support-masks", nargs="+", required=True, metavar="PNG",
                        help="one mask per support image, same order")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--device", default=DEFAULTS.device, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help=f"model input size (default: the checkpoint's config, else "
                             f"{' '.join(map(str, DEFAULTS.image_size))})")
    parser.add_argument("--memory-threshold", type=float,
                        help=f"default: the checkpoint's config, else {DEFAULTS.memory_threshold}")
    parser.add_argument("--memory-size", type=int, help=f"default: the checkpoint's config, else {DEFAULTS.memory_size}")
    parser.add_argument("--clip-length", type=int, help=f"default: the checkpoint's config, else {DEFAULTS.clip_length}")
    parser.add_argument("--memory-pool-size", type=int, default=DEFAULTS.predictor_memory_pool_size, metavar="N",
                        help="draw memory from the N most recent reliable frames only, bounding memory on long "
                             f"videos (default {DEFAULTS.predictor_memory_pool_size}; 0: from all of them, as the authors)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (CUDA, or CPUs with AVX512-BF16: ~1.9x faster there)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the memory-frame draws")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints with arbitrary pickled objects (files you trust only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --output (refused without it)")
    return parser


def check_output_folder(out_dir: str, overwrite: bool) -> None:
    """Refuse, before any model is loaded, an --output that cannot be written or holds other files."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--output {out_dir!r} is a file; expected a folder for masks/, overlay.mp4 and predictions.json")
    reason = unwritable_reason(out_dir)
    if reason:
        raise UserError(f"cannot write into --output {out_dir!r}: {reason}")
    existing = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if existing and not overwrite:
        raise UserError(f"--output {out_dir!r} is not empty ({', '.join(existing[:5])}{', ...' if len(existing) > 5 else ''}); "
                        f"pass --overwrite to replace an earlier run's outputs, or choose an empty folder")


def write_outputs(out_dir: str, results: Iterable[FrameResult], fps: float, meta: dict) -> int:
    """Stream `results` (with frames) into masks/, overlay.mp4 (H.264) and predictions.json; returns
    the number of frames. Everything is written under hidden partial names first and swapped in at
    the end, replacing the earlier outputs completely (no stale masks): a failure part-way (e.g. an
    unreadable frame) removes the partial files and leaves the previous outputs as they were."""
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".masks.partial.", dir=out_dir)
    writer, records = None, []
    try:
        for result in results:
            if writer is None:
                writer = VideoWriter.open(os.path.join(out_dir, "overlay.mp4"), fps=fps, size=result.frame.shape[:2])
            mask_path = os.path.join(staging, f"{result.name}.png")
            if not cv2.imwrite(mask_path, result.mask * 255):
                raise UserError(f"cannot write {mask_path!r}")
            writer.write(overlay(result.frame, result.mask))
            records.append({"frame": result.name, "score": result.score, "object_fraction": float(result.mask.mean())})
        mask_dir = os.path.join(out_dir, "masks")
        old = mask_dir + ".old"
        if os.path.exists(mask_dir):
            os.replace(mask_dir, old)
        os.replace(staging, mask_dir)
        shutil.rmtree(old, ignore_errors=True)
        if writer is not None:
            writer.close()                                   # renames the finished video onto overlay.mp4
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_json(os.path.join(out_dir, "predictions.json"), {**meta, "frames": records})
    return len(records)


def overlay(frame_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 frame with the object tinted (for the overlay video), as test.py's overlays."""
    return tint(frame_rgb, mask, OVERLAY_COLOR_RGB)


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    check_output_folder(args.output, args.overwrite)
    support_rgb, support_masks = prepare_supports(args.support_images, args.support_masks)
    video = open_video(args.video)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=resolve_device(args.device), image_size=args.image_size,
        trusted=args.trust_checkpoint, memory_threshold=args.memory_threshold, memory_size=args.memory_size,
        clip_length=args.clip_length, memory_pool_size=args.memory_pool_size, bf16=args.bf16, seed=args.seed)
    results = predictor.segment(video, support_rgb, support_masks, keep_frames=True)
    meta = {"checkpoint": args.checkpoint, "weights": predictor.checkpoint, "video": args.video, "supports": list(args.support_images),
            "support_masks": list(args.support_masks), **predictor.settings(), "fps": video.fps}
    with tqdm(results, total=video.length, desc="segmenting", unit="frame") as progress:
        count = write_outputs(args.output, progress, video.fps, meta)
    logger.info("wrote %d masks, overlay.mp4 and predictions.json to %s", count, args.output)
    return 0


if __name__ == "__main__":
    reuse_freed_memory()    # inference re-allocates large buffers every clip (utils/runtime.py)
    sys.exit(run(main))
