"""The training data's draws against the authors' rules, on synthetic data (issue 21).

    python benchmarks/data_draws.py [--epochs 40] [--episodes 1500]

Two checks, each ours (default and opt-in) side by side with the authors' rule written out here
from its description (docs/faithfulness.md; not the authors' code):

1. Support frames with a present-but-empty segmentation. A synthetic YouTube-VIS tree gets empty
   segmentations on a third of the instances of every class (frames with no other instance of the
   class). The authors draw a support as a uniform random class frame of a uniform random video
   of the class, so the expected share of empty supports is the mean, over (class, video), of the
   video's share of empty class frames, computed here from the annotation file. Ours: the share
   drawn by `EpisodeDataset._draw_supports` with skip_empty_supports False (default) and True.
2. Per-epoch class counts of the batch sampler, 30 classes x 100 episodes, batches of 4: the
   authors' rule (a random permutation of the items; an item whose class is already in its batch
   becomes a class drawn by rejection among all classes until it is not in the batch) with
   Python's `random`, against `DifferentClassBatchSampler` (default and balanced=True): spread of
   the counts, share of replaced items, and the counts' histogram (two-sample chi-square).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import DifferentClassBatchSampler, EpisodeKey, EpisodeSpec, YouTubeVISDataset  # noqa: E402
from dataset.episodes import item_rng  # noqa: E402
from synthetic import write_synthetic_youtube_vis  # noqa: E402

CLASSES, PER_CLASS, BATCH = 30, 100, 4


# ---- 1. empty supports -------------------------------------------------------------------------------
def data_with_empty_segmentations(root: str, share: float = 1 / 3, seed: int = 0) -> str:
    """A small YouTube-VIS tree; `share` of each class's instances get empty segmentations where no
    other instance of the class is present (so the class mask there is empty)."""
    write_synthetic_youtube_vis(root, seed=seed, videos_per_class=6, frames_per_video=6, frame_size=(64, 64),
                                num_categories=8)
    path = os.path.join(root, "train", "train.json")
    data = json.load(open(path))
    videos = {v["id"]: v for v in data["videos"]}
    rng = random.Random(seed)
    for ann in data["annotations"]:
        if rng.random() >= share:
            continue
        video = videos[ann["video_id"]]
        same = [a for a in data["annotations"] if a is not ann and a["video_id"] == ann["video_id"]
                and a["category_id"] == ann["category_id"]]
        for i, segmentation in enumerate(ann["segmentations"]):
            if segmentation is not None and all(a["segmentations"][i] is None for a in same):
                ann["segmentations"][i] = {"counts": [video["height"] * video["width"]],
                                           "size": [video["height"], video["width"]]}
    json.dump(data, open(path, "w"))
    return root


def authors_expected_empty_share(dataset: YouTubeVISDataset) -> float:
    """Mean over (class, video) of the share of the video's class frames whose class mask is empty."""
    shares = []
    for class_id in dataset.classes:
        for video in dataset.videos_of_class(class_id):
            frames = dataset.support_frames_of(video, class_id)
            shares.append(np.mean([not dataset.load_mask(video, f, class_id).any() for f in frames]))
    return float(np.mean(shares))


def drawn_empty_share(dataset: YouTubeVISDataset, episodes: int) -> tuple[int, int]:
    empty = total = 0
    for index in range(episodes):
        class_id = dataset.classes[index % len(dataset.classes)]
        rng = item_rng(dataset.seed, 0, index)
        videos = dataset.videos_of_class(class_id)
        chosen = [videos[i] for i in rng.choice(len(videos), dataset.spec.support_shots, replace=False)]
        (_, masks), _ = dataset._draw_supports(class_id, chosen, videos, rng)
        empty += sum(not m.any() for m in masks)
        total += len(masks)
    return empty, total


# ---- 2. class counts ---------------------------------------------------------------------------------
def authors_epoch_counts(rng: random.Random) -> tuple[np.ndarray, int]:
    """(per-class counts, replaced items) of one epoch of the authors' rule."""
    order = list(range(CLASSES * PER_CLASS))
    rng.shuffle(order)
    counts, replaced, batch = np.zeros(CLASSES, int), 0, []
    for index in order:
        cls = index // PER_CLASS
        if cls in batch:
            replaced += 1
            while cls in batch:
                cls = rng.randrange(CLASSES)
        batch.append(cls)
        if len(batch) == BATCH:
            for c in batch:
                counts[c] += 1
            batch = []
    return counts, replaced


class Items:
    def __len__(self):
        return CLASSES * PER_CLASS

    def class_of_index(self, index):
        return index.class_id if isinstance(index, EpisodeKey) else index // PER_CLASS


def sampler_epoch_counts(sampler: DifferentClassBatchSampler, epoch: int) -> tuple[np.ndarray, int]:
    sampler.set_epoch(epoch)
    items = [i for batch in sampler for i in batch]
    counts = np.bincount([Items().class_of_index(i) for i in items], minlength=CLASSES)
    return counts, sum(isinstance(i, EpisodeKey) for i in items)


def chi_square_two_sample(a: list, b: list) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom of two histograms of integer values (bins with
    fewer than 10 expected merged into the tails)."""
    ca, cb = Counter(a), Counter(b)
    values = sorted(set(ca) | set(cb))
    na, nb = len(a), len(b)
    bins, current = [], [0, 0]
    for v in values:
        current = [current[0] + ca[v], current[1] + cb[v]]
        if min(current) >= 10 or sum(current) >= 40:
            bins.append(current)
            current = [0, 0]
    if sum(current):
        bins[-1] = [bins[-1][0] + current[0], bins[-1][1] + current[1]]
    stat = 0.0
    for x, y in bins:
        total = x + y
        ex, ey = total * na / (na + nb), total * nb / (na + nb)
        stat += (x - ex) ** 2 / ex + (y - ey) ** 2 / ey
    return stat, len(bins) - 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40, help="sampler epochs per side")
    parser.add_argument("--episodes", type=int, default=1500, help="support draws per side (x5 supports)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = data_with_empty_segmentations(os.path.join(tmp, "ytvis"))
        authors = YouTubeVISDataset(root, split="train", group=1, spec=EpisodeSpec(image_size=(64, 64)))
        skipping = YouTubeVISDataset(root, split="train", group=1,
                                     spec=EpisodeSpec(image_size=(64, 64), skip_empty_supports=True))
        expected = authors_expected_empty_share(authors)
        drawn, total = drawn_empty_share(authors, args.episodes)
        skipped, total_skipping = drawn_empty_share(skipping, args.episodes)
    error = np.sqrt(expected * (1 - expected) / total)
    print(f"empty supports: authors' rule expects {expected:.4f}; ours default drew {drawn}/{total} = "
          f"{drawn / total:.4f} (z = {(drawn / total - expected) / error:+.2f}); "
          f"skip_empty_supports=true drew {skipped}/{total_skipping}")

    rng = random.Random(0)
    sides = {"authors' rule": [authors_epoch_counts(rng) for _ in range(args.epochs)]}
    for name, balanced in (("ours default", False), ("balanced_class_sampler", True)):
        sampler = DifferentClassBatchSampler(Items(), batch_size=BATCH, seed=42, balanced=balanced)
        sides[name] = [sampler_epoch_counts(sampler, e) for e in range(args.epochs)]
    print(f"class counts per epoch ({CLASSES} classes x {PER_CLASS}, batch {BATCH}, {args.epochs} epochs):")
    for name, epochs in sides.items():
        counts = np.concatenate([c for c, _ in epochs])
        replaced = np.mean([r for _, r in epochs]) / (CLASSES * PER_CLASS)
        print(f"  {name:24s} mean {counts.mean():6.2f}  std {counts.std():5.2f}  min {counts.min():3d}  "
              f"max {counts.max():3d}  replaced {100 * replaced:4.2f} %")
    a = np.concatenate([c for c, _ in sides["authors' rule"]]).tolist()
    b = np.concatenate([c for c, _ in sides["ours default"]]).tolist()
    stat, dof = chi_square_two_sample(a, b)
    print(f"  histogram of counts, authors' rule vs ours default: chi-square {stat:.1f} on {dof} degrees of freedom")
    return 0


if __name__ == "__main__":
    sys.exit(main())
