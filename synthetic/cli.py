"""``python -m synthetic {youtube_vis,vspw} --root DIR``: write a small synthetic dataset."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Sequence

from dataset.errors import DatasetError
from utils.runtime import run_cli

from .vspw import write_synthetic_vspw
from .youtube_vis import write_synthetic_youtube_vis


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``argv``: None reads sys.argv) through the scripts' error boundary."""
    return run_cli(_main, argv, (DatasetError,))


def _given(value: "int | None", default: int) -> int:
    """An option's value, or the format's default when it was not given (0 is a value: the writer refuses it)."""
    return default if value is None else value


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synthetic",
        description="Write a small synthetic dataset in the YouTube-VIS 2019 or VSPW 480p format.")
    parser.add_argument("format", choices=("youtube_vis", "vspw"))
    parser.add_argument("--root", required=True, help="output folder (created; must be new, empty or "
                                                      "a synthetic dataset written before)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos-per-class", type=int, default=None,
                        help="youtube_vis: videos per category (default 8); "
                             "vspw: val-split videos per class (default 6)")
    parser.add_argument("--train-videos-per-class", type=int, default=3, help="vspw only (default 3)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per video (default 7 for youtube_vis, 6 for vspw)")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=216)
    parser.add_argument("--portrait-videos", type=int, default=0, help="youtube_vis only")
    parser.add_argument("--no-lists", action="store_true", help="vspw: do not write the MiniVSPW lists")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic dataset written with other parameters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    if args.format == "youtube_vis":
        write_synthetic_youtube_vis(
            args.root, args.seed, videos_per_class=_given(args.videos_per_class, 8),
            frames_per_video=_given(args.frames, 7), frame_size=(args.height, args.width),
            portrait_videos=args.portrait_videos, overwrite=args.overwrite)
    else:
        write_synthetic_vspw(
            args.root, args.seed, val_videos_per_class=_given(args.videos_per_class, 6),
            train_videos_per_class=args.train_videos_per_class, frames_per_video=_given(args.frames, 6),
            frame_size=(args.height, args.width), write_lists=not args.no_lists,
            overwrite=args.overwrite)
    print(f"{args.format} dataset ready in {args.root} ({time.perf_counter() - start:.1f} s)")
    return 0
