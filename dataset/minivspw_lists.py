"""Generate the MiniVSPW fold lists (SPEC section 9) from a VSPW 480p download.

Reads ``<vspw-root>/train.txt`` and ``val.txt`` (VSPW's video splits), the label file
``label_num_dic_final.json`` (class name -> VSPW id) and every mask PNG of those videos, and writes
for each fold ``i`` in 0..3 into ``<out>`` (default ``<vspw-root>/lists/nminivspw_pascal``):

* ``{train,val,test}_i.txt``: one frame per line, ``<video> <video>/mask/<frame>.png``; a frame is
  listed when a class of that split covers more than ``--min-pixels`` (100) pixels of it; train
  lines come from VSPW's train videos, val and test lines from VSPW's val videos;
* ``class_{train,val,test}_i.json``: ``{"<VSPW id>": "<name>"}`` of the split's classes;
* ``.index_{train,val,test}_i.json``: the loader's index cache (see :mod:`dataset.minivspw`).

Classes (TTI split, by name; ids come from the label file): test classes per fold as below, the
other 15 of the 20 train, and the 5 validation classes are the same for every fold. Another
assignment can be given with ``--fold-spec FILE`` (JSON: ``{"test": [[names of fold 0], ...
4 lists], "val": [names]}``). Output is deterministic (sorted videos and frames).

    python -m dataset.minivspw_lists --vspw-root data/VSPW_480p [--out DIR] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from multiprocessing import Pool
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .errors import DatasetError
from utils.fileio import atomic_write_json, atomic_write_text
from .minivspw import (FRAMES_RELDIR, LISTS_RELDIR, MASK_FOLDER, MASK_SUFFIX, cache_file,
                       class_file, list_file, read_label_image, write_index_cache)

logger = logging.getLogger(__name__)

LABEL_FILE = "label_num_dic_final.json"
MIN_CLASS_PIXELS = 100
NUM_FOLDS = 4
TTI_TEST_CLASSES = (
    ("airplane", "bicycle", "ship_or_boat", "bottle_or_cup", "book"),
    ("bus", "car", "cat", "chair_or_seat", "truck"),
    ("dog", "horse", "motorcycle", "person", "table_or_desk"),
    ("flower_pot_or_vase", "sofa", "train", "screen_or_television", "cattle"),
)
TTI_VAL_CLASSES = ("blackboard", "billboard_or_Bulletin_Board", "parasol_or_umbrella",
                   "cushion_or_carpet", "tent")


def read_label_file(path: str) -> dict[str, int]:
    """``{class name: VSPW id}`` from VSPW's label file (either direction of mapping accepted)."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"VSPW label file not found: {path} (it ships with VSPW 480p as "
                           f"{LABEL_FILE}; pass --label-file if it lives elsewhere)") from None
    except ValueError as err:
        raise DatasetError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected a JSON object mapping class names to VSPW ids")

    def is_int(value) -> bool:
        try:
            int(value)
            return True
        except (TypeError, ValueError):
            return False

    if all(is_int(v) for v in data.values()):
        return {str(name): int(i) for name, i in data.items()}
    if all(is_int(k) for k in data):
        return {str(name): int(i) for i, name in data.items()}
    raise DatasetError(f"{path}: expected a JSON object mapping class names to integer VSPW ids")


def read_video_split(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return sorted({line.strip() for line in handle if line.strip()})
    except FileNotFoundError:
        raise DatasetError(f"VSPW split file not found: {path} (VSPW 480p ships train.txt and "
                           f"val.txt listing its videos)") from None


def fold_class_names(fold_spec: dict | None = None):
    """``(test names per fold, val names)``, the TTI split unless ``fold_spec`` overrides it."""
    if fold_spec is None:
        return [list(names) for names in TTI_TEST_CLASSES], list(TTI_VAL_CLASSES)
    try:
        test = [list(map(str, names)) for names in fold_spec["test"]]
        val = list(map(str, fold_spec["val"]))
    except (KeyError, TypeError):
        raise DatasetError("fold spec must be {\"test\": [[names of fold 0], ... 4 lists], "
                           "\"val\": [names]}") from None
    if len(test) != NUM_FOLDS or any(not names for names in test) or not val:
        raise DatasetError(f"fold spec needs {NUM_FOLDS} non-empty test class lists and a "
                           f"non-empty val list")
    return test, val


def _scan_video(job: tuple[str, str, tuple[int, ...]]):
    """Pixel counts of the wanted classes in every mask of one video."""
    frames_dir, video, wanted = job
    folder = os.path.join(frames_dir, video, MASK_FOLDER)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(MASK_SUFFIX))
    except FileNotFoundError:
        raise DatasetError(f"missing mask folder {folder} of VSPW video {video}") from None
    wanted_ids = np.asarray(wanted, dtype=np.int64)
    frames = []
    for name in names:
        labels = read_label_image(os.path.join(folder, name), f"video {video}")
        counts = np.bincount(labels.ravel(), minlength=256)[wanted_ids]
        frames.append((name[:-len(MASK_SUFFIX)], {int(c): int(n) for c, n in zip(wanted, counts) if n}))
    return video, frames


def generate_lists(vspw_root: str, out_dir: str | None = None, label_file: str | None = None,
                   fold_spec: dict | None = None, min_pixels: int = MIN_CLASS_PIXELS,
                   workers: int = 1, show_progress: bool = True) -> str:
    """Write the MiniVSPW lists, class files and index caches of the 4 folds; return ``out_dir``."""
    frames_dir = os.path.join(vspw_root, FRAMES_RELDIR)
    if not os.path.isdir(frames_dir):
        raise DatasetError(f"VSPW frame directory not found: {frames_dir} (expected "
                           f"<vspw-root>/data/<video>/origin/*.jpg and mask/*.png)")
    out_dir = out_dir or os.path.join(vspw_root, LISTS_RELDIR)
    names_to_ids = read_label_file(label_file or os.path.join(vspw_root, LABEL_FILE))
    test_names, val_names = fold_class_names(fold_spec)
    all_names = sorted({n for names in test_names for n in names})
    missing = [n for n in all_names + val_names if n not in names_to_ids]
    if missing:
        raise DatasetError(f"class name(s) {', '.join(missing)} not in the VSPW label file "
                           f"{label_file or os.path.join(vspw_root, LABEL_FILE)}")
    ids = {n: names_to_ids[n] for n in all_names + val_names}
    wanted = tuple(sorted(set(ids.values())))
    train_videos = read_video_split(os.path.join(vspw_root, "train.txt"))
    val_videos = read_video_split(os.path.join(vspw_root, "val.txt"))

    jobs = [(frames_dir, video, wanted) for video in train_videos + val_videos]
    counts: dict[str, list] = {}
    start = time.perf_counter()
    progress = tqdm(total=len(jobs), desc="VSPW masks", unit="video", disable=not show_progress)
    if workers > 1:
        with Pool(workers) as pool:
            for video, frames in pool.imap(_scan_video, jobs, chunksize=4):
                counts[video] = frames
                progress.update()
    else:
        for job in jobs:
            video, frames = _scan_video(job)
            counts[video] = frames
            progress.update()
    progress.close()
    logger.info("scanned the masks of %d VSPW videos in %.1f s", len(jobs), time.perf_counter() - start)

    os.makedirs(out_dir, exist_ok=True)
    for fold in range(NUM_FOLDS):
        test_ids = sorted(ids[n] for n in test_names[fold])
        train_ids = sorted({ids[n] for names in test_names for n in names} - set(test_ids))
        val_ids = sorted(ids[n] for n in val_names)
        for split, class_ids, videos in (("train", train_ids, train_videos), ("val", val_ids, val_videos),
                                         ("test", test_ids, val_videos)):
            lines = []
            index: dict[int, dict[str, list[str]]] = {c: {} for c in class_ids}
            for video in videos:
                for stem, pixels in counts[video]:
                    if not any(pixels.get(c, 0) > min_pixels for c in class_ids):
                        continue
                    lines.append(f"{video} {video}/{MASK_FOLDER}/{stem}{MASK_SUFFIX}\n")
                    for c in class_ids:
                        if pixels.get(c, 0) > 0:
                            index[c].setdefault(video, []).append(stem)
            list_path = list_file(out_dir, split, fold)
            atomic_write_text(list_path, "".join(lines))
            id_to_name = {i: n for n, i in names_to_ids.items()}
            atomic_write_json(class_file(out_dir, split, fold),
                              {str(c): id_to_name[c] for c in class_ids}, indent=1)
            write_index_cache(cache_file(out_dir, split, fold), list_path, class_ids, index)
            empty = [c for c in class_ids if not index[c]]
            if empty:
                logger.warning("fold %d %s: class(es) %s appear in no listed frame", fold, split,
                               ", ".join(map(str, empty)))
            logger.info("fold %d %s: %d frames, %d classes", fold, split, len(lines), len(class_ids))
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataset.minivspw_lists",
                                     description="Generate the MiniVSPW fold lists from VSPW 480p.")
    parser.add_argument("--vspw-root", required=True,
                        help="VSPW 480p folder (data/, train.txt, val.txt, label_num_dic_final.json)")
    parser.add_argument("--out", default=None, help="output folder (default <vspw-root>/lists/nminivspw_pascal)")
    parser.add_argument("--label-file", default=None, help=f"default <vspw-root>/{LABEL_FILE}")
    parser.add_argument("--fold-spec", default=None, help="JSON file with other fold classes")
    parser.add_argument("--min-pixels", type=int, default=MIN_CLASS_PIXELS,
                        help="a frame is listed when a split class covers more pixels than this")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = None
        if args.fold_spec:
            try:
                with open(args.fold_spec, "rb") as handle:
                    spec = json.load(handle)
            except (OSError, ValueError) as err:
                raise DatasetError(f"cannot read the fold spec {args.fold_spec}: {err}") from None
        out = generate_lists(args.vspw_root, args.out, args.label_file, spec, args.min_pixels, args.workers)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"MiniVSPW lists written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
