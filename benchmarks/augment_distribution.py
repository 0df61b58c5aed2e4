"""fast_augment against the default augmentation: output statistics over many training episodes.

Each episode's frames are drawn by the dataset's own rules from a small synthetic YouTube-VIS tree
(a quarter of the videos portrait); both transforms get the same frames and the same seed (so the
same crop/affine/contrast/noise/flip draws) and every output list (query 15 frames, support 5)
is measured:

* mask area ratio: object pixels / output pixels;
* mask position: the object's centroid (x, y) as fractions of the output width and height;
* border fraction: pixels inside the letterbox that are the affine's fill (value 0 before
  contrast/noise, so ``noise`` after them, within 0.5 on every channel), over the letterbox;
* intensity mean / std: pixel values (0-255 scale, normalisation undone) inside the letterbox;
* flip rate: lists whose first frame (never cropped or warped) came out mirrored, decided by
  comparing it with the un-augmented letterbox of the same frame.

Frames and the output size are small (default 216x384 into 120x216: downscaled, as 1280x720 into
240x424 is) to fit 2000 episodes in minutes; the statistics are ratios, not sizes.

    python benchmarks/augment_distribution.py --episodes 2000
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import EpisodeSpec, build_dataset  # noqa: E402
from dataset.transforms import (IMAGENET_MEAN, IMAGENET_STD, FastTrainTransform, TestTransform,  # noqa: E402
                                TrainTransform, letterbox_geometry, list_draws)
from synthetic import write_synthetic_youtube_vis  # noqa: E402

STATS = ["mask area ratio", "mask centroid x", "mask centroid y", "border fraction", "intensity mean",
         "intensity std", "flip rate"]


class CaptureLists:
    """Stands in for the dataset's transform: keeps the (frames, masks) lists it is given."""

    def __init__(self):
        self.lists = []

    def __call__(self, frames, masks, rng):
        self.lists.append(([np.asarray(f) for f in frames], [np.asarray(m) for m in masks]))
        return torch.zeros(1), torch.zeros(1)


def noise_of(seed: int) -> float:
    """The additive noise both transforms draw for a list transformed with ``default_rng(seed)``."""
    return list_draws(np.random.default_rng(seed))[2]


def list_statistics(images: torch.Tensor, masks: torch.Tensor, frames, out_size, noise: float,
                    plain_first_mask: np.ndarray) -> dict:
    """Statistics of one output list ``[T,3,H,W]`` / ``[T,1,H,W]``."""
    pixels = (images.permute(0, 2, 3, 1).numpy() * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    height, width = frames[0].shape[:2]
    if height >= width:
        height, width = width, height
    new_height, new_width, top, left = letterbox_geometry(height, width, *out_size)
    inside = pixels[:, top:top + new_height, left:left + new_width]
    object_masks = masks[:, 0].numpy() > 0.5
    ys, xs = np.nonzero(object_masks.any(axis=0))
    first = object_masks[0]
    flipped = (not np.array_equal(first, plain_first_mask)) and np.array_equal(first, plain_first_mask[:, ::-1])
    return {"mask area ratio": float(object_masks.mean()),
            "mask centroid x": float(xs.mean() / out_size[1]) if xs.size else float("nan"),
            "mask centroid y": float(ys.mean() / out_size[0]) if ys.size else float("nan"),
            "border fraction": float((np.abs(inside - noise) < 0.5).all(axis=-1).mean()),
            "intensity mean": float(inside.mean()), "intensity std": float(inside.std()),
            "flip rate": float(flipped)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--root", default="data/augment_distribution")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(216, 384))
    parser.add_argument("--out-size", type=int, nargs=2, default=(120, 216))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    root = write_synthetic_youtube_vis(args.root, seed=5, videos_per_class=4, frames_per_video=20,
                                       frame_size=tuple(args.frame_size), num_categories=40, portrait_videos=40)
    dataset = build_dataset("youtube_vis", root=root, split="train", group=1,
                            spec=EpisodeSpec(image_size=tuple(args.out_size)), episodes_per_class=max(1, -(-args.episodes // 30)), augment=False)
    capture = CaptureLists()
    dataset.transform = capture
    out_size = tuple(args.out_size)
    transforms = {"default": TrainTransform(out_size), "fast_augment": FastTrainTransform(out_size)}
    plain = TestTransform(out_size)
    values = {name: {stat: [] for stat in STATS} for name in transforms}
    seconds = {name: 0.0 for name in transforms}
    started = time.time()
    for episode in range(args.episodes):
        capture.lists.clear()
        dataset[episode % len(dataset)]
        for part, (frames, masks) in enumerate(capture.lists):       # query list, support list
            seed = episode * 2 + part
            first_frame = frames[0].transpose(1, 0, 2) if frames[0].shape[0] >= frames[0].shape[1] else frames[0]
            first_mask = masks[0].T if masks[0].shape[0] >= masks[0].shape[1] else masks[0]
            plain_first = plain([first_frame], [first_mask])[1][0, 0].numpy() > 0.5
            for name, transform in transforms.items():
                clock = time.process_time()
                images, out_masks = transform(frames, masks, np.random.default_rng(seed))
                seconds[name] += time.process_time() - clock
                for stat, value in list_statistics(images, out_masks, frames, out_size, noise_of(seed),
                                                   plain_first).items():
                    values[name][stat].append(value)
    print(f"# {args.episodes} episodes ({2 * args.episodes} lists), frames {args.frame_size[0]}x{args.frame_size[1]} "
          f"(a quarter portrait) into {out_size[0]}x{out_size[1]}, {time.time() - started:.0f} s\n")
    print("| statistic (mean over lists; std) | default | fast_augment |\n|---|---|---|")
    for stat in STATS:
        cells = []
        for name in transforms:
            data = [v for v in values[name][stat] if np.isfinite(v)]
            cells.append(f"{statistics.fmean(data):.4f} (std {statistics.pstdev(data):.4f})")
        print(f"| {stat} | " + " | ".join(cells) + " |")
    print("| CPU s per episode (these sizes) | " + " | ".join(f"{seconds[n] / args.episodes:.4f}"
                                                             for n in transforms) + " |")


if __name__ == "__main__":
    main()
