"""How long does indexing a full-scale YouTube-VIS 2019 train.json take?

Writes a synthetic train.json with the size of the real one (2,238 videos, 40 categories,
~36 annotated frames per video, 1-3 instances per video, 720x1280 masks as uncompressed RLE,
some instances absent in some frames) and times :func:`dataset.youtube_vis.index_annotations`
(JSON parse + metadata index) and the construction of a train split on top of it.

    python benchmarks/index_speed.py            # writes to a temporary directory
    python benchmarks/index_speed.py --out /tmp/ytvis_full --keep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import youtube_vis  # noqa: E402

NUM_VIDEOS = 2238
NUM_CATEGORIES = 40
FRAMES_RANGE = (31, 42)          # lengths drawn uniformly: mean ~36
INSTANCES_RANGE = (1, 4)         # 1..3 instances per video
FRAME_HEIGHT, FRAME_WIDTH = 720, 1280
MASK_POOL = 96                   # distinct blob masks reused across frames
BLOB_VERTICES = 48
ABSENT_PROBABILITY = 0.08        # chance that an instance is missing (null) in a frame
COMPRESSED_FRACTION = 0.0        # real train.json uses uncompressed RLE


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths starting with zeros)."""
    flat = np.asfortranarray(mask).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def blob_pool(rng: np.random.Generator, count: int) -> list[dict]:
    """Irregular blobs covering 3-30 % of the frame, encoded as RLE dicts."""
    import pycocotools.mask as mask_utils
    pool = []
    for _ in range(count):
        area_fraction = rng.uniform(0.03, 0.30)
        radius = np.sqrt(area_fraction * FRAME_HEIGHT * FRAME_WIDTH / np.pi)
        centre = rng.uniform([radius, radius], [FRAME_WIDTH - radius, FRAME_HEIGHT - radius])
        angles = np.linspace(0, 2 * np.pi, BLOB_VERTICES, endpoint=False)
        radii = radius * (1 + 0.25 * np.sin(angles * rng.integers(2, 6) + rng.uniform(0, 6))
                          + 0.08 * rng.standard_normal(BLOB_VERTICES))
        points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
        mask = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8)
        cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
        if rng.random() < COMPRESSED_FRACTION:
            rle = mask_utils.encode(np.asfortranarray(mask))
            pool.append({"counts": rle["counts"].decode("ascii"), "size": rle["size"]})
        else:
            pool.append(uncompressed_rle(mask))
    return pool


def write_full_scale_json(path: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pool = blob_pool(rng, MASK_POOL)
    videos, annotations = [], []
    for video_id in range(1, NUM_VIDEOS + 1):
        name = f"{video_id:010x}"
        length = int(rng.integers(*FRAMES_RANGE))
        videos.append({"id": video_id, "width": FRAME_WIDTH, "height": FRAME_HEIGHT, "length": length,
                       "file_names": [f"{name}/{5 * i:05d}.jpg" for i in range(length)]})
        for _ in range(int(rng.integers(*INSTANCES_RANGE))):
            segs = [None if rng.random() < ABSENT_PROBABILITY else pool[int(rng.integers(MASK_POOL))]
                    for _ in range(length)]
            annotations.append({
                "id": len(annotations) + 1, "video_id": video_id, "iscrowd": 0,
                "category_id": int(rng.integers(1, NUM_CATEGORIES + 1)),
                "width": FRAME_WIDTH, "height": FRAME_HEIGHT, "length": length,
                "segmentations": segs,
                "areas": [None if s is None else 1 for s in segs],
                "bboxes": [None if s is None else [0, 0, 1, 1] for s in segs]})
    data = {"info": {"description": "synthetic full-scale YouTube-VIS 2019 train.json"},
            "licenses": [], "videos": videos, "annotations": annotations,
            "categories": [{"id": c, "name": f"class_{c:02d}", "supercategory": "object"}
                           for c in range(1, NUM_CATEGORIES + 1)]}
    with open(path, "w") as handle:
        json.dump(data, handle, separators=(",", ":"))
    masks = sum(s is not None for a in annotations for s in a["segmentations"])
    return {"videos": len(videos), "annotations": len(annotations), "masks": masks}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for the synthetic dataset (default: temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    parser.add_argument("--repeats", type=int, default=3, help="timed indexing runs")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse <out>/train/train.json if it exists instead of writing it")
    args = parser.parse_args()

    root = args.out or tempfile.mkdtemp(prefix="ytvis_full_")
    os.makedirs(os.path.join(root, "train", "JPEGImages"), exist_ok=True)
    path = os.path.join(root, "train", "train.json")
    if args.reuse and os.path.isfile(path):
        print(f"reusing {path}: {os.path.getsize(path) / 2**20:.0f} MiB")
    else:
        start = time.perf_counter()
        counts = write_full_scale_json(path)
        print(f"wrote {path}: {os.path.getsize(path) / 2**20:.0f} MiB, {counts['videos']} videos, "
              f"{counts['annotations']} instances, {counts['masks']} masks "
              f"({time.perf_counter() - start:.1f} s)")

    rss_before = max_rss_mib()
    timings = []
    for _ in range(args.repeats):
        youtube_vis._index_cached.cache_clear()
        start = time.perf_counter()
        index = youtube_vis.index_annotations(path)
        timings.append(time.perf_counter() - start)
        del index
    print(f"index_annotations: best {min(timings):.2f} s, mean {np.mean(timings):.2f} s over "
          f"{args.repeats} runs (JSON parse + metadata index); peak RSS {max_rss_mib():.0f} MiB "
          f"(before indexing {rss_before:.0f} MiB)")

    start = time.perf_counter()
    dataset = youtube_vis.YouTubeVISDataset(root, split="train", group=1)
    built = time.perf_counter() - start
    record = dataset.index.videos[dataset.videos_of_class(dataset.classes[0])[0]]
    start = time.perf_counter()
    mask = dataset.load_mask(record.name, record.class_frames[dataset.classes[0]][0], dataset.classes[0])
    decoded = time.perf_counter() - start
    print(f"train split on the cached index: {built * 1000:.0f} ms, {len(dataset.classes)} classes, "
          f"{len(dataset)} episodes; one 720x1280 class mask decoded in {decoded * 1000:.1f} ms "
          f"({int(mask.sum())} object pixels)")
    if not args.keep and not args.out:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
