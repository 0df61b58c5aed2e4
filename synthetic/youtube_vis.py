"""A small synthetic YouTube-VIS 2019 tree: ``train/train.json`` + ``train/JPEGImages/<video>/<frame>.jpg``.

Segmentations in train.json mix uncompressed RLE, compressed RLE and polygons, and instances
absent in a frame have ``null`` segmentations, so readers meet every encoding of the real file.
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from dataset.errors import DatasetError
from utils.fileio import atomic_write_json

from .scene import BACKGROUND_PAN_PX, class_look, pixel_grid, plan_video, render_background, render_frame
from .tree import check_frame_size, prepare_root, staged_tree, write_jpeg


ENCODING_WEIGHTS = {"rle_uncompressed": 0.4, "rle_compressed": 0.4, "polygon": 0.2}
FRAME_STEP = 5                    # YouTube-VIS names every 5th frame of the source video


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a 0/1 mask: column-major run lengths, starting with zeros."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(s) for s in rle["size"]]}


def polygon_segmentation(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a mask as COCO polygons (holes are not representable)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def encode_segmentation(mask: np.ndarray, encoding: str):
    """``(segmentation, annotated mask)``: the JSON value and the mask it decodes to."""
    if encoding == "polygon":
        polygons = polygon_segmentation(mask)
        if polygons:
            height, width = mask.shape
            decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
            return polygons, decoded.astype(bool)
        encoding = "rle_compressed"   # nothing to outline: fall back to RLE
    if encoding == "rle_uncompressed":
        return uncompressed_rle(mask), mask.astype(bool)
    return compressed_rle(mask), mask.astype(bool)



def video_name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        name = f"{int(rng.integers(16 ** 10)):010x}"
        if name not in used:
            used.add(name)
            return name



def write_synthetic_youtube_vis(root: str, seed: int = 0, *, videos_per_class: int = 8,
                                frames_per_video: int = 7, frame_size: Sequence[int] = (120, 216),
                                num_categories: int = 40, portrait_videos: int = 0,
                                overwrite: bool = False) -> str:
    """Write a small YouTube-VIS 2019 tree under ``root``; return ``root``.

    ``videos_per_class`` videos have each category as their main class (so with the default 8
    a test query has 7 other videos to draw its 5 supports from); each video has
    ``frames_per_video`` frames of ``frame_size`` (H, W). ``portrait_videos`` of the videos
    (the first ones written) are rendered with H and W swapped.
    """
    size = check_frame_size(frame_size)
    for name, value, low in (("videos_per_class", videos_per_class, 1),
                             ("frames_per_video", frames_per_video, 1),
                             ("num_categories", num_categories, 1), ("portrait_videos", portrait_videos, 0)):
        if int(value) < low:
            raise DatasetError(f"{name} must be >= {low}, got {value}")
    params = {"format": "youtube_vis_2019", "seed": int(seed), "videos_per_class": int(videos_per_class),
              "frames_per_video": int(frames_per_video), "frame_size": list(size),
              "num_categories": int(num_categories), "portrait_videos": int(portrait_videos)}
    staging = prepare_root(root, params, overwrite)
    if staging is None:
        return root
    with staged_tree(staging, root, params, "synthetic YouTube-VIS dataset") as report:
        rng = np.random.default_rng(seed)
        looks = [class_look(i) for i in range(num_categories)]
        frames_dir = os.path.join(staging, "train", "JPEGImages")
        os.makedirs(frames_dir)
        encodings = list(ENCODING_WEIGHTS)
        weights = np.array(list(ENCODING_WEIGHTS.values()))
        videos, annotations, used_names = [], [], set()
        grids = {}
        jobs = [(c, v) for c in range(num_categories) for v in range(videos_per_class)]
        for number, (class_index, _) in enumerate(jobs):
            video_size = (size[1], size[0]) if number < portrait_videos else size
            grid = grids.setdefault(video_size, pixel_grid(video_size))
            name = video_name(rng, used_names)
            os.makedirs(os.path.join(frames_dir, name))
            tracks = plan_video(rng, class_index, num_categories, video_size, frames_per_video, looks)
            pad = BACKGROUND_PAN_PX * frames_per_video
            background = render_background(rng, video_size, pad)
            pan_step = rng.integers(-BACKGROUND_PAN_PX, BACKGROUND_PAN_PX + 1, size=2)
            brightness = rng.uniform(0.92, 1.08)
            segmentations = [[] for _ in tracks]
            file_names = []
            for t in range(frames_per_video):
                pan = (int(pad + pan_step[0] * t), int(pad + pan_step[1] * t))
                image, visible = render_frame(tracks, looks, t, background, pan, video_size, grid,
                                               brightness)
                for i, mask in enumerate(visible):
                    if mask is None:
                        segmentations[i].append(None)
                        continue
                    encoding = encodings[int(rng.choice(len(encodings), p=weights))]
                    segmentation, annotated = encode_segmentation(mask, encoding)
                    segmentations[i].append((segmentation, annotated))
                file_name = f"{name}/{FRAME_STEP * t:05d}.jpg"
                write_jpeg(os.path.join(frames_dir, file_name), image)
                file_names.append(file_name)
            video_id = len(videos) + 1
            videos.append({"id": video_id, "width": video_size[1], "height": video_size[0],
                           "length": frames_per_video, "file_names": file_names})
            for track, per_frame in zip(tracks, segmentations):
                annotations.append(_annotation(len(annotations) + 1, video_id, track.class_index + 1,
                                               video_size, per_frame))
        categories = [{"id": i + 1, "name": f"{looks[i].texture}_{looks[i].shape}_{i + 1:02d}",
                       "supercategory": looks[i].shape} for i in range(num_categories)]
        data = {"info": {"description": "synthetic YouTube-VIS 2019 style dataset (python -m synthetic)",
                         "seed": int(seed)},
                "licenses": [], "videos": videos, "annotations": annotations, "categories": categories}
        atomic_write_json(os.path.join(staging, "train", "train.json"), data, indent=None)
        report["videos"] = len(videos)
    return root


def _annotation(ann_id: int, video_id: int, category_id: int, size: tuple[int, int], per_frame) -> dict:
    segs, areas, boxes = [], [], []
    for entry in per_frame:
        if entry is None:
            segs.append(None)
            areas.append(None)
            boxes.append(None)
            continue
        segmentation, annotated = entry
        segs.append(segmentation)
        areas.append(int(annotated.sum()))
        rows, cols = np.flatnonzero(annotated.any(axis=1)), np.flatnonzero(annotated.any(axis=0))
        boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
                      float(rows[-1] - rows[0] + 1)] if len(rows) else None)
    return {"id": ann_id, "video_id": video_id, "category_id": category_id, "iscrowd": 0,
            "height": size[0], "width": size[1], "length": len(per_frame),
            "segmentations": segs, "areas": areas, "bboxes": boxes}

