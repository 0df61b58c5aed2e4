"""The training data loader at YouTube-VIS resolution: transform CPU cost, stages and episodes/s.

Writes (once, cached) synthetic YouTube-VIS 2019 trees at real resolutions: 1280x720 and
640x360 (one tree each), JPEG frames, RLE / polygon annotations in train.json, a quarter of the
videos portrait.
Then, one thread per process:

1. **transform**: one training episode's frames (15 query + 5 support, decoded once) through the
   default ``TrainTransform``, ``FastTrainTransform`` (``fast_augment=true``) and, with
   ``--authors-repo``, the authors' ``TrainTransform`` (imported from their repository's
   ``libs/dataset/transform.py``; nothing of it is copied here). The three alternate, ``--repeats``
   times; the median CPU seconds (``time.process_time``) per episode and the ratios are printed,
   for a landscape and a portrait episode of each resolution.
2. **stages**: core-seconds per episode by stage, ``--episodes`` episodes through the loader
   train.py builds (``vipmt.build.build_train_loader``, ``num_workers=0`` so that the stages run
   here): read + JPEG decode, annotation decode, crop + affine (imgaug), the transform's other
   work (uint8 transpose / flip, normalise, stacking), letterbox + contrast/noise, collate; for
   ``fast_augment`` the single warp replaces crop/affine/letterbox.
3. **loader**: episodes/s of that loader with 1, 2 and ``auto`` workers (the first batch, which
   starts the workers, is left out).

    python benchmarks/loader_speed.py --authors-repo /path/to/VIPMT            # everything
    python benchmarks/loader_speed.py --parts transform --repeats 5 --authors-repo ...
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stage_clock import StageClock  # noqa: E402
from config import get_config, update_config  # noqa: E402
from dataset import DifferentClassBatchSampler, transforms  # noqa: E402
from dataset.transforms import FastTrainTransform, ImgaugGeometry, TrainTransform  # noqa: E402
from synthetic import write_synthetic_youtube_vis  # noqa: E402
from vipmt import build  # noqa: E402

IMAGE_SIZE = (240, 424)
RESOLUTIONS = {"1280x720": (720, 1280), "640x360": (360, 640)}
QUERY_FRAMES, SHOTS = 15, 5
STAGES = ["read + JPEG decode", "annotation decode", "crop + affine (imgaug)", "transpose / flip / normalise / stack",
          "letterbox + contrast/noise", "letterbox masks", "fast_augment: one warp + float",
          "collate"]


def write_datasets(root: str) -> dict:
    """{resolution: dataset root}: 8 categories x 2 videos x 15 frames, the first 4 videos portrait."""
    return {name: write_synthetic_youtube_vis(os.path.join(root, name), seed=1, videos_per_class=2,
                                              frames_per_video=QUERY_FRAMES, frame_size=size, num_categories=8,
                                              portrait_videos=4)
            for name, size in RESOLUTIONS.items()}


TRAIN_CLASSES = 6          # of the 8 categories, fold 1 trains on 6


def loader_config(data_root: str, episodes: int = 8, **values):
    """train.py's config on ``data_root`` with at least ``episodes`` training episodes per epoch."""
    return update_config(get_config(), {"youtube_vis_root": data_root, "image_size": list(IMAGE_SIZE),
                                        "episodes_per_class": math.ceil(episodes / TRAIN_CLASSES), **values})


# ---------------------------------------------------------------- 1. the transform against the authors'
def episode_frames(dataset, portrait: bool):
    """(query frames, masks), (support frames, masks) of one class: 15 frames of a video of the
    wanted orientation, and frame 0 of five videos of the class (decoded here, once)."""
    for class_id in dataset.classes:
        videos = dataset.videos_of_class(class_id)
        for video in videos:
            frame0 = dataset.load_image(video, 0)
            if (frame0.shape[0] >= frame0.shape[1]) != portrait:
                continue
            query = [(dataset.load_image(video, f), dataset.load_mask(video, f, class_id))
                     for f in dataset.query_frames_of(video, class_id)[:QUERY_FRAMES]]
            support = [(dataset.load_image(v, 0), dataset.load_mask(v, 0, class_id))
                       for v in (videos * SHOTS)[:SHOTS]]
            return [list(x) for x in zip(*query)], [list(x) for x in zip(*support)]
    raise SystemExit(f"error: no {'portrait' if portrait else 'landscape'} video in {dataset}")


def authors_transform(repo: str):
    """The authors' TrainTransform class from their repository's libs/dataset/transform.py."""
    path = os.path.join(repo, "libs", "dataset", "transform.py")
    if not os.path.isfile(path):
        raise SystemExit(f"error: --authors-repo {repo!r}: {path} not found (expected a checkout of "
                         f"https://github.com/nankepan/VIPMT)")
    sys.path.insert(0, os.path.dirname(path))     # their folder, for this benchmark process only
    import transform as module  # noqa: WPS433 - the authors' module, named as in their repository

    return module.TrainTransform(IMAGE_SIZE)


def time_transforms(query, support, authors, repeats: int) -> dict:
    """Median CPU seconds per episode of each transform, the paths alternating."""
    ours, fast = TrainTransform(IMAGE_SIZE), FastTrainTransform(IMAGE_SIZE)

    def ours_episode(seed, transform):
        rng = np.random.default_rng(seed)
        transform(*query, rng=rng)
        transform(*support, rng=rng)

    def authors_episode(seed):
        np.random.seed(seed)           # the authors' transforms draw from the global generators
        random.seed(seed)
        for frames, masks in (query, support):     # they write into the lists they are given
            authors([f.copy() for f in frames], [m.copy() for m in masks])

    paths = {"default": lambda s: ours_episode(s, ours), "fast_augment": lambda s: ours_episode(s, fast)}
    if authors is not None:
        paths["authors"] = authors_episode
    times = {name: [] for name in paths}
    for repeat in range(repeats + 1):
        for name, run in paths.items():
            started = time.process_time()
            run(repeat)
            if repeat:                  # the first round warms up
                times[name].append(time.process_time() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def transform_table(roots: dict, authors_repo: str | None, repeats: int) -> str:
    authors = authors_transform(authors_repo) if authors_repo else None
    rows = ["| frames | authors' (s/episode) | default | fast_augment | authors / default | authors / fast |",
            "|---|---|---|---|---|---|"]
    for name, root in roots.items():
        dataset = build.build_split(loader_config(root), "train", episodes_per_class=1, seed=0, augment=True)
        for portrait in (False, True):
            query, support = episode_frames(dataset, portrait)
            median = time_transforms(query, support, authors, repeats)
            label = f"{name} {'portrait' if portrait else 'landscape'}"
            if authors is None:
                rows.append(f"| {label} | - | {median['default']:.3f} | {median['fast_augment']:.3f} | - | - |")
            else:
                rows.append(f"| {label} | {median['authors']:.3f} | {median['default']:.3f} | "
                            f"{median['fast_augment']:.3f} | {median['authors'] / median['default']:.2f}x | "
                            f"{median['authors'] / median['fast_augment']:.2f}x |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


# ---------------------------------------------------------------- 2. stages
def instrument(clock: StageClock, dataset) -> None:
    """Time the loader's stages in this process (instance attributes and this module's names)."""
    dataset.load_image = clock.wrap("read + JPEG decode", dataset.load_image)
    dataset.load_mask = clock.wrap("annotation decode", dataset.load_mask)
    dataset.transform = clock.wrap(
        "fast_augment: one warp + float" if isinstance(dataset.transform, FastTrainTransform)
        else "transpose / flip / normalise / stack", dataset.transform)


class patched:
    """Wrap module / class attributes with a StageClock for the duration of a block."""

    def __init__(self, clock: StageClock):
        self.targets = [(transforms, "letterbox_image", "letterbox + contrast/noise"),
                        (transforms, "letterbox_mask", "letterbox masks"),
                        (ImgaugGeometry, "__call__", "crop + affine (imgaug)"),
                        (build, "collate_episodes", "collate")]
        self.clock, self.saved = clock, []

    def __enter__(self):
        for owner, name, stage in self.targets:
            self.saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self.clock.wrap(stage, getattr(owner, name)))
        return self

    def __exit__(self, *exc):
        for owner, name, value in self.saved:
            setattr(owner, name, value)


def stage_table(roots: dict, episodes: int) -> str:
    rows = ["| stage (core-ms per episode) | " + " | ".join(f"{n} default | {n} fast_augment" for n in roots) + " |",
            "|---|" + "---|" * (2 * len(roots))]
    columns = []
    for root in roots.values():
        for fast in (False, True):
            cfg = loader_config(root, episodes, num_workers=0, batch_size=1, fast_augment=fast)
            dataset = build.build_split(cfg, "train", episodes_per_class=cfg.episodes_per_class, seed=0, augment=True)
            clock = StageClock(clock=time.thread_time)
            instrument(clock, dataset)
            with patched(clock):       # collate_episodes is looked up when the loader is built
                sampler = DifferentClassBatchSampler(dataset, batch_size=1, seed=0)
                loader = build.build_train_loader(cfg, dataset, sampler, device=torch.device("cpu"))
                started = time.thread_time()
                count = 0
                for _batch in loader:
                    count += 1
                    if count == episodes:
                        break
                total = time.thread_time() - started
            columns.append(({k: 1000 * v / count for k, v in clock.seconds.items()}, 1000 * total / count))
    for stage in STAGES:
        rows.append(f"| {stage} | " + " | ".join(f"{c[0].get(stage, 0.0):.0f}" for c in columns) + " |")
    rows.append("| **total (core-ms per episode)** | " + " | ".join(f"**{c[1]:.0f}**" for c in columns) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------- 3. episodes/s
def throughput_table(roots: dict, workers: list, batches: int) -> str:
    rows = ["| workers | " + " | ".join(f"{n} default | {n} fast_augment" for n in roots) + " |",
            "|---|" + "---|" * (2 * len(roots))]
    for count in workers:
        cells = []
        for root in roots.values():
            for fast in (False, True):
                cfg = loader_config(root, (batches + 1) * 4, num_workers=count, fast_augment=fast)
                dataset = build.build_split(cfg, "train", episodes_per_class=cfg.episodes_per_class, seed=0,
                                            augment=True)
                sampler = DifferentClassBatchSampler(dataset, batch_size=cfg.batch_size, seed=0)
                loader = build.build_train_loader(cfg, dataset, sampler, device=torch.device("cpu"))
                iterator = iter(loader)
                next(iterator)             # starts the workers
                started, episodes = time.perf_counter(), 0
                for _ in range(batches):
                    try:
                        episodes += len(next(iterator)["class_id"])
                    except StopIteration:
                        break
                cells.append(f"{episodes / (time.perf_counter() - started):.2f}")
                del iterator, loader
        label = f"{count}" if count != "auto" else f"auto ({build.resolve_num_workers('auto')})"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/loader_speed", help="where the synthetic trees are written (cached)")
    parser.add_argument("--authors-repo", help="a checkout of the authors' repository (for their TrainTransform)")
    parser.add_argument("--parts", nargs="+", default=["transform", "stages", "loader"],
                        choices=["transform", "stages", "loader"])
    parser.add_argument("--repeats", type=int, default=5, help="transform timings per path (median)")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per stage measurement")
    parser.add_argument("--batches", type=int, default=8,
                        help="batches (of batch_size 4) timed per loader measurement, after the first")
    parser.add_argument("--workers", nargs="+", default=["1", "2", "auto"])
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)    # the synthetic classes have few videos: no warnings
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"# loader_speed: {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} output, one thread per process, "
          f"{build.available_cpus()} CPUs, load average %.2f, %.2f, %.2f" % os.getloadavg(), flush=True)
    roots = write_datasets(args.root)
    if "transform" in args.parts:
        print(f"\n## transform: CPU s per episode (15 + 5 frames), median of {args.repeats}, alternating\n")
        print(transform_table(roots, args.authors_repo, args.repeats))
    if "stages" in args.parts:
        print(f"\n## stages: core-ms per episode, {args.episodes} episodes, num_workers=0\n")
        print(stage_table(roots, args.episodes))
    if "loader" in args.parts:
        print(f"\n## loader: episodes/s, batch_size 4, {args.batches} batches after the first\n")
        print(throughput_table(roots, [w if w == "auto" else int(w) for w in args.workers], args.batches))
    print("\nload average after: %.2f, %.2f, %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
