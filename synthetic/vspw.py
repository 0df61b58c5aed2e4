"""A small synthetic VSPW 480p tree (and, by default, the MiniVSPW fold lists)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dataset.errors import DatasetError
from dataset.minivspw_lists import generate_lists
from utils.fileio import atomic_write_json, atomic_write_text

from .scene import BACKGROUND_PAN_PX, class_look, pixel_grid, plan_video, render_background, render_frame
from .tree import check_frame_size, prepare_root, staged_tree, write_jpeg, write_png


# MiniVSPW classes (VSPW ids) of the TTI split, and background "stuff" ids used in masks.
VSPW_CLASS_NAMES = {
    57: "airplane", 52: "bicycle", 55: "ship_or_boat", 85: "bottle_or_cup", 111: "book",
    50: "bus", 49: "car", 62: "cat", 91: "chair_or_seat", 51: "truck",
    63: "dog", 64: "horse", 53: "motorcycle", 61: "person", 90: "table_or_desk",
    109: "flower_pot_or_vase", 93: "sofa", 124: "train", 115: "screen_or_television", 65: "cattle",
    113: "blackboard", 41: "billboard_or_Bulletin_Board", 45: "parasol_or_umbrella",
    46: "cushion_or_carpet", 47: "tent",
}
VSPW_STUFF_NAMES = {0: "others", 1: "wall", 14: "floor", 29: "sky"}
VSPW_NUM_IDS = 125  # VSPW ids 0..124


def write_synthetic_vspw(root: str, seed: int = 0, *, val_videos_per_class: int = 6,
                         train_videos_per_class: int = 3, frames_per_video: int = 6,
                         frame_size: Sequence[int] = (120, 216), write_lists: bool = True,
                         overwrite: bool = False) -> str:
    """Write a small VSPW 480p tree under ``root`` (and the MiniVSPW lists); return ``root``.

    Each of the 25 MiniVSPW classes (VSPW ids of the TTI split) is the main class of
    ``train_videos_per_class`` videos of VSPW's train split and ``val_videos_per_class`` of its
    val split. Masks hold VSPW class ids (0 = others, stuff ids for the background bands).
    """
    size = check_frame_size(frame_size)
    for name, value in (("val_videos_per_class", val_videos_per_class),
                        ("train_videos_per_class", train_videos_per_class),
                        ("frames_per_video", frames_per_video)):
        if int(value) < 1:
            raise DatasetError(f"{name} must be >= 1, got {value}")
    params = {"format": "vspw_480p", "seed": int(seed), "val_videos_per_class": int(val_videos_per_class),
              "train_videos_per_class": int(train_videos_per_class),
              "frames_per_video": int(frames_per_video), "frame_size": list(size),
              "write_lists": bool(write_lists)}
    staging = prepare_root(root, params, overwrite)
    if staging is None:
        return root
    with staged_tree(staging, root, params, "synthetic VSPW dataset") as report:
        rng = np.random.default_rng(seed)
        class_ids = sorted(VSPW_CLASS_NAMES)
        looks = [class_look(i) for i in range(len(class_ids))]
        stuff_ids = [i for i in sorted(VSPW_STUFF_NAMES) if i != 0]
        grid = pixel_grid(size)
        splits: dict[str, list[str]] = {"train": [], "val": []}
        jobs = [(split, c) for split, count in (("train", train_videos_per_class), ("val", val_videos_per_class))
                for c in range(len(class_ids)) for _ in range(count)]
        for number, (split, class_index) in enumerate(jobs):
            name = f"{number:04d}_{int(rng.integers(16 ** 6)):06x}"
            splits[split].append(name)
            origin = os.path.join(staging, "data", name, "origin")
            mask_dir = os.path.join(staging, "data", name, "mask")
            os.makedirs(origin)
            os.makedirs(mask_dir)
            tracks = plan_video(rng, class_index, len(class_ids), size, frames_per_video, looks)
            pad = BACKGROUND_PAN_PX * frames_per_video
            background = render_background(rng, size, pad)
            horizon = int(rng.integers(size[0] // 4, 3 * size[0] // 4))
            top_id, bottom_id = (int(i) for i in rng.choice(stuff_ids, 2, replace=False))
            pan_step = rng.integers(-BACKGROUND_PAN_PX, BACKGROUND_PAN_PX + 1, size=2)
            brightness = rng.uniform(0.92, 1.08)
            for t in range(frames_per_video):
                pan = (int(pad + pan_step[0] * t), int(pad + pan_step[1] * t))
                image, visible = render_frame(tracks, looks, t, background, pan, size, grid, brightness)
                labels = np.full(size, bottom_id, dtype=np.uint8)
                labels[:horizon] = top_id
                for track, mask in zip(tracks, visible):
                    if mask is not None:
                        labels[mask] = class_ids[track.class_index]
                stem = f"{t:08d}"
                write_jpeg(os.path.join(origin, stem + ".jpg"), image)
                write_png(os.path.join(mask_dir, stem + ".png"), labels)
        for split, names in splits.items():
            atomic_write_text(os.path.join(staging, f"{split}.txt"), "".join(n + "\n" for n in names))
        atomic_write_text(os.path.join(staging, "test.txt"), "")
        label_names = {f"synthetic_{i}": i for i in range(VSPW_NUM_IDS)}
        for ids in (VSPW_STUFF_NAMES, VSPW_CLASS_NAMES):
            for class_id, class_name in ids.items():
                label_names.pop(f"synthetic_{class_id}", None)
                label_names[class_name] = class_id
        ordered = dict(sorted(label_names.items(), key=lambda item: item[1]))
        atomic_write_json(os.path.join(staging, "label_num_dic_final.json"), ordered, indent=1)
        report["videos"] = len(jobs)
        if write_lists:
            generate_lists(staging, workers=1, show_progress=False)
    return root
