"""The MiniVSPW fold lists (the TTI split of VSPW 480p): generate them, or check a set of lists.

The TTI authors (Siam et al.) publish the lists in their repository (``lists/nminivspw_pascal/``
of https://github.com/MSiam/tti_fsvos); copying those into ``<vspw-root>/lists/nminivspw_pascal``
works as well as generating them here. Generation reads ``<vspw-root>/train.txt`` and ``val.txt``
(VSPW's video splits), the label file ``label_num_dic_final.json`` (class name -> VSPW id) and
every mask PNG of those videos, and writes for each fold ``i`` in 0..3 into ``<out>`` (default
``<vspw-root>/lists/nminivspw_pascal``):

* ``{train,val,test}_i.txt``: one frame per line, ``<video> <video>/mask/<frame>.png``; a frame is
  listed when a class of that split covers more than ``--min-pixels`` (100) pixels of it; train
  lines come from VSPW's train videos, val and test lines from VSPW's val videos, videos in the
  order of ``train.txt`` / ``val.txt``, frames sorted by name (the published lists' order);
* ``class_{train,val,test}_i.json``: ``{"<VSPW id>": "<name>"}`` of the split's classes, in the
  published files' order and format (``json.dumps``, one line, no trailing newline);
* ``.index_{train,val,test}_i.json``: the loader's index cache (see :mod:`dataset.minivspw`).

Classes: the 25 classes of ``TTI_CLASS_ORDER``. Per fold, the 5 test classes and the 5
validation classes are those of ``TTI_TEST_CLASSES`` / ``TTI_VAL_CLASSES`` (validation classes
differ per fold), in that order; the 15 training classes are the remaining ones, in the order of
``TTI_CLASS_ORDER``. Another assignment can be given with ``--fold-spec FILE`` (JSON:
``{"test": [4 lists of names], "val": [names] or [4 lists], "classes": [names, optional]}``;
training classes are the other classes of ``classes``, default every test and val class in order
of first appearance). Output is deterministic.

``--check DIR`` compares a set of lists (generated or downloaded) with the published ones: the
class files' ids, names and order, and the line count, distinct video count and SHA-256 of every
published list whose numbers are known (``PUBLISHED_LISTS``). It names every file that differs
and exits with status 1 if any does.

    python -m dataset.minivspw_lists --vspw-root data/VSPW_480p [--out DIR] [--workers 8]
    python -m dataset.minivspw_lists --check data/VSPW_480p/lists/nminivspw_pascal
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .errors import DatasetError
from utils.fileio import atomic_write_text
from utils.runtime import run_cli
from .minivspw import (FRAMES_RELDIR, LISTS_RELDIR, MASK_FOLDER, MASK_SUFFIX, cache_file,
                       class_file, list_file, read_label_image, write_index_cache)

logger = logging.getLogger(__name__)

LABEL_FILE = "label_num_dic_final.json"
MIN_CLASS_PIXELS = 100
NUM_FOLDS = 4
# The TTI split (names as in VSPW's label file; ids of VSPW 480p in TTI_CLASS_IDS).
TTI_CLASS_ORDER = (
    "airplane", "bicycle", "ship_or_boat", "bottle_or_cup", "bus", "car", "cat", "chair_or_seat",
    "cattle", "table_or_desk", "dog", "horse", "motorcycle", "person", "flower_pot_or_vase", "sofa",
    "train", "screen_or_television", "book", "truck", "blackboard", "billboard_or_Bulletin_Board",
    "parasol_or_umbrella", "cushion_or_carpet", "tent",
)
TTI_TEST_CLASSES = (
    ("airplane", "bicycle", "ship_or_boat", "bottle_or_cup", "book"),
    ("bus", "car", "cat", "chair_or_seat", "truck"),
    ("dog", "horse", "motorcycle", "person", "table_or_desk"),
    ("flower_pot_or_vase", "sofa", "train", "screen_or_television", "cattle"),
)
TTI_VAL_CLASSES = (
    ("blackboard", "tent", "truck", "parasol_or_umbrella", "cushion_or_carpet"),
    ("billboard_or_Bulletin_Board", "blackboard", "book", "parasol_or_umbrella", "cushion_or_carpet"),
    ("blackboard", "billboard_or_Bulletin_Board", "parasol_or_umbrella", "cushion_or_carpet", "tent"),
    ("blackboard", "billboard_or_Bulletin_Board", "parasol_or_umbrella", "cushion_or_carpet", "tent"),
)
TTI_CLASS_IDS = {
    "airplane": 57, "bicycle": 52, "ship_or_boat": 55, "bottle_or_cup": 85, "bus": 50, "car": 49,
    "cat": 62, "chair_or_seat": 91, "cattle": 65, "table_or_desk": 90, "dog": 63, "horse": 64,
    "motorcycle": 53, "person": 61, "flower_pot_or_vase": 109, "sofa": 93, "train": 124,
    "screen_or_television": 115, "book": 111, "truck": 51, "blackboard": 113,
    "billboard_or_Bulletin_Board": 41, "parasol_or_umbrella": 45, "cushion_or_carpet": 46, "tent": 47,
}


@dataclass(frozen=True)
class PublishedList:
    """What is known of a published list file: line count, distinct videos, SHA-256 prefix."""
    lines: int
    videos: int | None = None
    sha256_prefix: str | None = None     # first 16 hex digits


# The published TTI lists (lists/nminivspw_pascal/ of their repository).
PUBLISHED_LISTS = {
    "test_0.txt": PublishedList(3140, 61, "b8a1ff24b96e6f21"),
    "test_1.txt": PublishedList(5883, 96, "3f606f5d72bf1f7c"),
    "test_2.txt": PublishedList(17660, 261, "b88ba60a4edb8149"),
    "test_3.txt": PublishedList(4060, 64, "a50b5533e163b134"),
    "val_0.txt": PublishedList(2348, 36, "2d3533c08f2d78dd"),
    "val_1.txt": PublishedList(2938, 49, "864a331604606017"),
    "val_2.txt": PublishedList(3210, 51, "e7e024ff6797f951"),
    "val_3.txt": PublishedList(3210, 51, "e7e024ff6797f951"),
    "train_2.txt": PublishedList(71813),
}
SPLITS = ("train", "val", "test")


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
    """The videos of a VSPW split file, in file order (duplicates and blank lines dropped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"VSPW split file not found: {path} (VSPW 480p ships train.txt and "
                           f"val.txt listing its videos)") from None
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class FoldClasses:
    """Class names of one fold's splits, each in its class file's order."""
    train: list
    val: list
    test: list


def fold_class_names(fold_spec: dict | None = None) -> list[FoldClasses]:
    """The classes of the 4 folds: the TTI split unless ``fold_spec`` overrides it.

    Training classes are the classes of the overall order (``TTI_CLASS_ORDER``, or the spec's
    ``classes``) that are neither test nor validation classes of the fold, in that order.
    """
    if fold_spec is None:
        order, test, val = list(TTI_CLASS_ORDER), TTI_TEST_CLASSES, TTI_VAL_CLASSES
    else:
        usage = ("fold spec must be {\"test\": [4 lists of names], \"val\": [names] or [4 lists of "
                 "names], \"classes\": [names] (optional)}")
        try:
            test = [[str(n) for n in names] for names in fold_spec["test"]]
            val = fold_spec["val"]
            if val and all(isinstance(v, str) for v in val):
                val = [list(val)] * NUM_FOLDS
            val = [[str(n) for n in names] for names in val]
            order = fold_spec.get("classes")
        except (KeyError, TypeError, AttributeError):
            raise DatasetError(usage) from None
        if len(test) != NUM_FOLDS or len(val) != NUM_FOLDS or not all(test) or not all(val):
            raise DatasetError(f"fold spec needs {NUM_FOLDS} non-empty test and val class lists; {usage}")
        if order is None:
            order = list(dict.fromkeys([n for names in test for n in names] + [n for names in val for n in names]))
        order = [str(n) for n in order]
        unknown = sorted({n for names in test + val for n in names} - set(order))
        if unknown:
            raise DatasetError(f"fold spec: class(es) {', '.join(unknown)} are not in its \"classes\" list")
    folds = []
    for fold in range(NUM_FOLDS):
        held_out = set(test[fold]) | set(val[fold])
        folds.append(FoldClasses(train=[n for n in order if n not in held_out],
                                 val=list(val[fold]), test=list(test[fold])))
    return folds


def class_file_text(classes: Sequence[tuple[int, str]]) -> str:
    """A class file's text: ``{"<id>": "<name>", ...}`` in order, as the published files write it."""
    return json.dumps({str(class_id): name for class_id, name in classes})


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
    folds = fold_class_names(fold_spec)
    all_names = list(dict.fromkeys(n for fold in folds for split in SPLITS for n in getattr(fold, split)))
    missing = [n for n in all_names if n not in names_to_ids]
    if missing:
        raise DatasetError(f"class name(s) {', '.join(missing)} not in the VSPW label file "
                           f"{label_file or os.path.join(vspw_root, LABEL_FILE)}")
    ids = {n: names_to_ids[n] for n in all_names}
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
    for fold, classes in enumerate(folds):
        for split in SPLITS:
            names = getattr(classes, split)
            class_ids = [ids[n] for n in names]
            videos = train_videos if split == "train" else val_videos
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
            atomic_write_text(class_file(out_dir, split, fold), class_file_text(list(zip(class_ids, names))))
            write_index_cache(cache_file(out_dir, split, fold), list_path, class_ids, index)
            empty = [c for c in class_ids if not index[c]]
            if empty:
                logger.warning("fold %d %s: class(es) %s appear in no listed frame", fold, split,
                               ", ".join(map(str, empty)))
            logger.info("fold %d %s: %d frames, %d classes", fold, split, len(lines), len(class_ids))
    return out_dir


# ----------------------------------------------------------------------------- check
@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: ``ok`` True/False, or None when nothing published is known of it."""
    name: str
    ok: bool | None
    detail: str


def describe_list(path: str) -> tuple[int, int, str]:
    """(line count, distinct videos, SHA-256 hex) of a list file."""
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    videos = {line.split()[0] for line in lines if line.split()}
    return len(lines), len(videos), hashlib.sha256(data).hexdigest()


def _check_class_file(path: str, expected: list[tuple[int, str]]) -> FileCheck:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return FileCheck(name, False, "missing")
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
        found = [(int(key), str(value)) for key, value in data.items()]
    except (ValueError, AttributeError, TypeError) as err:
        return FileCheck(name, False, f"not a JSON object of VSPW id -> name ({err})")
    show = lambda classes: ", ".join(f"{i} {n}" for i, n in classes)
    if found != expected:
        return FileCheck(name, False, f"classes {show(found)}; published: {show(expected)}")
    return FileCheck(name, True, show(found))


def _check_list_file(path: str, published: PublishedList | None) -> FileCheck:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return FileCheck(name, False, "missing")
    lines, videos, digest = describe_list(path)
    measured = f"{lines} lines, {videos} videos, sha256 {digest[:16]}"
    if published is None:
        return FileCheck(name, None, f"{measured} (no published numbers)")
    wrong = []
    if lines != published.lines:
        wrong.append(f"lines {lines} (published {published.lines})")
    if published.videos is not None and videos != published.videos:
        wrong.append(f"videos {videos} (published {published.videos})")
    if published.sha256_prefix is not None and digest[:16] != published.sha256_prefix:
        wrong.append(f"sha256 {digest[:16]} (published {published.sha256_prefix})")
    return FileCheck(name, not wrong, "; ".join(wrong) if wrong else measured)


def check_lists(lists_dir: str, published: dict | None = None) -> list[FileCheck]:
    """Compare the 24 files of a MiniVSPW list folder with the published TTI lists.

    Class files must hold the TTI classes (ids, names and order); list files with published
    numbers (``published``, default ``PUBLISHED_LISTS``) must match their line count, distinct
    video count and SHA-256 prefix, as far as each is known.
    """
    if not os.path.isdir(lists_dir):
        raise DatasetError(f"list folder not found: {lists_dir}")
    published = PUBLISHED_LISTS if published is None else published
    results = []
    for fold, classes in enumerate(fold_class_names()):
        for split in SPLITS:
            expected = [(TTI_CLASS_IDS[n], n) for n in getattr(classes, split)]
            results.append(_check_class_file(class_file(lists_dir, split, fold), expected))
            path = list_file(lists_dir, split, fold)
            results.append(_check_list_file(path, published.get(os.path.basename(path))))
    return results


def report_check(results: list[FileCheck], lists_dir: str) -> int:
    """Print one line per file and a summary; the number of files that differ."""
    labels = {True: "ok", False: "DIFFERS", None: "unknown"}
    for result in results:
        print(f"{labels[result.ok]:8s}{result.name}: {result.detail}")
    differ = [r.name for r in results if r.ok is False]
    if differ:
        print(f"{len(differ)} file(s) in {lists_dir} differ from the published MiniVSPW lists: "
              f"{', '.join(differ)}", file=sys.stderr)
    else:
        print(f"every file in {lists_dir} matches what is published of the MiniVSPW lists")
    return len(differ)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``argv``: None reads sys.argv) through the scripts' error boundary."""
    return run_cli(_main, argv, (DatasetError,))


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.minivspw_lists",
        description="Generate the MiniVSPW fold lists from VSPW 480p, or check a set of lists against "
                    "the published ones (TTI repository, lists/nminivspw_pascal/).")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--vspw-root",
                      help="generate from this VSPW 480p folder (data/, train.txt, val.txt, label_num_dic_final.json)")
    mode.add_argument("--check", metavar="DIR",
                      help="compare the lists in DIR (generated or downloaded) with the published ones; "
                           "exit status 1 if any file differs")
    parser.add_argument("--out", default=None, help="output folder (default <vspw-root>/lists/nminivspw_pascal)")
    parser.add_argument("--label-file", default=None, help=f"default <vspw-root>/{LABEL_FILE}")
    parser.add_argument("--fold-spec", default=None, help="JSON file with other fold classes")
    parser.add_argument("--min-pixels", type=int, default=MIN_CLASS_PIXELS,
                        help="a frame is listed when a split class covers more pixels than this")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        return 1 if report_check(check_lists(args.check), args.check) else 0
    spec = None
    if args.fold_spec:
        try:
            with open(args.fold_spec, "rb") as handle:
                spec = json.load(handle)
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read the fold spec {args.fold_spec}: {err}") from None
    out = generate_lists(args.vspw_root, args.out, args.label_file, spec, args.min_pixels, args.workers)
    print(f"MiniVSPW lists written to {out}")
    if spec is None and args.min_pixels == MIN_CLASS_PIXELS:
        differ = [r.name for r in check_lists(out) if r.ok is False]
        print("they match what is published of the TTI lists" if not differ else
              f"{len(differ)} of them differ from the published TTI lists ({', '.join(differ)}); expected "
              f"unless this is the complete VSPW 480p (details: python -m dataset.minivspw_lists --check {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
