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
predictions.json (per-frame predicted IoU score and object fraction). All three are written to a
hidden staging folder and swapped in only once all are written and verified: a full disk, a bad
frame or Ctrl-C leaves an earlier run's outputs exactly as they were (vipmt/outputs.py). The
folder is locked while a run writes it. A video file that ends before the frame count it declares
is an error unless --allow-truncated.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from tqdm import tqdm

from config.config import DEFAULTS
from utils.runtime import resolve_device, reuse_freed_memory
from vipmt.cli import run
from vipmt.outputs import PredictionOutputs
from vipmt.predictor import Predictor, open_video, prepare_supports

logger = logging.getLogger("predict")



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
    parser.add_argument("--allow-truncated", action="store_true",
                        help="a video file that ends before its declared frame count (cut short, or a frame "
                             "that does not decode): keep the frames read (logged, and in predictions.json) "
                             "instead of the error")
    return parser


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    with PredictionOutputs(args.output, overwrite=args.overwrite) as outputs:    # checked and locked first
        support_rgb, support_masks = prepare_supports(args.support_images, args.support_masks)
        video = open_video(args.video, allow_truncated=args.allow_truncated)
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=resolve_device(args.device), image_size=args.image_size,
            trusted=args.trust_checkpoint, memory_threshold=args.memory_threshold, memory_size=args.memory_size,
            clip_length=args.clip_length, memory_pool_size=args.memory_pool_size, bf16=args.bf16, seed=args.seed)
        results = predictor.segment(video, support_rgb, support_masks, keep_frames=True)

        def meta() -> dict:
            fields = {"checkpoint": args.checkpoint, "weights": predictor.checkpoint, "video": args.video,
                      "supports": list(args.support_images), "support_masks": list(args.support_masks),
                      **predictor.settings(), "fps": video.fps}
            if video.truncation is not None:
                fields["truncated"] = video.truncation
            return fields

        with tqdm(results, total=video.length, desc="segmenting", unit="frame") as progress:
            count = outputs.write(progress, fps=video.fps, meta=meta)
    logger.info("wrote %d masks, overlay.mp4 and predictions.json to %s", count, args.output)
    return 0


if __name__ == "__main__":
    reuse_freed_memory()    # inference re-allocates large buffers every clip (utils/runtime.py)
    sys.exit(run(main))
