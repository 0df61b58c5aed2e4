"""Pre-flight check of a dataset: decode every frame and mask the splits use, list every bad file.

    python -m dataset.check --dataset youtube_vis --data-root data/Youtube-VOS [--group 1] [--splits train val test]

A bad JPEG or PNG otherwise stops a training run hours in, at the first episode that draws it,
one file per run. This reads every file the chosen splits can reference, in one pass, and prints
every problem at once (``path: reason``, sorted): missing, unreadable, truncated or corrupt
frames; unreadable mask PNGs (MiniVSPW) or undecodable RLE/polygon annotations (YouTube-VIS,
whose masks live in ``train.json``); annotations of category ids no fold uses (YouTube-VIS:
outside 1..40);
masks whose size differs from their frame. Exit status 0
when all is well, 2 otherwise (also for a dataset that cannot be indexed at all).

It also counts, per class, the *present-but-empty* segmentations: frames where the class has a
segmentation (so they are support candidates) that holds no pixel. The authors may draw such a
frame as a support (an empty support mask); config ``skip_empty_supports=true`` redraws it. The
counts (on stderr) say whether that choice matters on this copy of the data. MiniVSPW indexes a
class in a frame only where its label PNG has the class's pixels, so it has none by construction.

Which files a split references:

* YouTube-VIS: for every class of the split and every video holding it, the frames where the
  class is present (the query sequence and the support candidates), and the class's masks there;
* MiniVSPW: every frame of every video in the split's list file (the query sequence is the whole
  video) plus the listed frames (support candidates), each with its mask PNG. Read from the list
  file, so that a broken listed mask, which stops the loader's indexing, is reported with the rest.

Library use (e.g. an opt-in pre-flight in train.py, config key ``check_data``)::

    from dataset.check import find_bad_files, raise_if_bad
    raise_if_bad(find_bad_files(train_set) + find_bad_files(val_set))   # DatasetError listing them
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .base import SPLITS, EpisodeDataset
from .errors import DatasetError, check_regular_file

__all__ = ["BadFile", "CheckReport", "find_bad_files", "check_dataset", "check_dataset_report", "raise_if_bad",
           "format_bad_files", "format_empty_segmentations", "main"]

DEFAULT_WORKERS = 4                 # decoding threads (PIL releases the GIL while decoding)
MAX_LISTED_IN_ERROR = 50            # raise_if_bad lists this many files, then a count


@dataclass(frozen=True, order=True)
class BadFile:
    """A file that the data pipeline cannot use, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class _Frame:
    """One frame to check: its image file, its mask (a PNG, or decoded from the annotations)."""

    image: str
    mask: str                                        # mask PNG, or the annotation file holding it
    where: str                                       # "video V, frame F" for messages
    class_masks: Dict[Any, Callable[[], np.ndarray]] = field(default_factory=dict)   # annotation masks


@dataclass
class CheckReport:
    """What a check found: the bad files, the frames checked, and per class (YouTube-VIS) the
    ``(present-but-empty, present)`` counts of its segmentations over the checked frames."""

    bad: List[BadFile]
    checked: int
    empty_segmentations: Dict[Any, Tuple[int, int]]


def _decode_image(path: str) -> Tuple[int, int]:
    """Decode fully, as the loaders do (a truncated JPEG only fails here); return (h, w)."""
    check_regular_file(path, "frame file")
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return rgb.height, rgb.width


def _decode_label_png(path: str) -> Tuple[int, int]:
    check_regular_file(path, "mask file")
    with Image.open(path) as image:
        labels = np.asarray(image)
    if labels.ndim != 2:
        raise ValueError(f"shape {labels.shape}; expected a single-channel image of class ids")
    return labels.shape


def _problem(path: str, decode: Callable[[str], Tuple[int, int]]) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    try:
        return decode(path), None
    except FileNotFoundError:
        return None, "file not found"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:   # PIL raises all of these
        return None, f"cannot be decoded ({err})"


def _check_frame(frame: _Frame) -> Tuple[List[BadFile], List[Any]]:
    """(bad files, classes whose decoded mask has no pixel) of one frame."""
    bad: List[BadFile] = []
    empty: List[Any] = []
    image_size, problem = _problem(frame.image, _decode_image)
    if problem:
        bad.append(BadFile(frame.image, f"{frame.where}: {problem}"))
    mask_sizes = []
    if frame.class_masks:
        for class_id, decode in sorted(frame.class_masks.items(), key=lambda item: str(item[0])):
            try:
                mask = decode()
            except DatasetError as err:
                message = str(err)
                if message.startswith(frame.mask + ": "):
                    message = message[len(frame.mask) + 2:]
                bad.append(BadFile(frame.mask, f"class {class_id}: {message}"))
            else:
                mask_sizes.append(mask.shape[:2])
                if not mask.any():
                    empty.append(class_id)
    else:
        mask_size, problem = _problem(frame.mask, _decode_label_png)
        if problem:
            bad.append(BadFile(frame.mask, f"{frame.where}: {problem}"))
        mask_sizes = [mask_size] if mask_size else []
    if image_size is not None:
        for size in set(mask_sizes):
            if tuple(size) != tuple(image_size):
                bad.append(BadFile(frame.mask, f"{frame.where}: mask size {size[0]}x{size[1]} differs from "
                                               f"the frame size {image_size[0]}x{image_size[1]} of {frame.image}"))
    return bad, empty


# ---- what a split references ------------------------------------------------------------------
def _frames_of_dataset(dataset: EpisodeDataset, frames: Dict[Tuple[str, str], _Frame]) -> None:
    """Add the frames ``dataset`` references (see the module docstring) to ``frames``."""
    from .minivspw import IMAGE_FOLDER, IMAGE_SUFFIX, MASK_FOLDER, MASK_SUFFIX, MiniVSPWDataset
    from .youtube_vis import YouTubeVISDataset

    for class_id in dataset.classes:
        for video in dataset.videos_of_class(class_id):
            used = list(dict.fromkeys(list(dataset.query_frames_of(video, class_id))
                                      + list(dataset.support_frames_of(video, class_id))))
            for index in used:
                where = f"video {video}, frame {dataset.frame_name(video, index)}"
                if isinstance(dataset, YouTubeVISDataset):
                    image, mask = dataset.frame_path(video, index), dataset.annotation_file
                elif isinstance(dataset, MiniVSPWDataset):
                    image = os.path.join(dataset.frames_dir, video, IMAGE_FOLDER, f"{index}{IMAGE_SUFFIX}")
                    mask = os.path.join(dataset.frames_dir, video, MASK_FOLDER, f"{index}{MASK_SUFFIX}")
                else:
                    raise DatasetError(f"find_bad_files does not know the files of {type(dataset).__name__}")
                entry = frames.setdefault((image, mask), _Frame(image=image, mask=mask, where=where))
                if isinstance(dataset, YouTubeVISDataset):
                    entry.class_masks.setdefault(
                        class_id, lambda v=video, i=index, c=class_id: dataset.load_mask(v, i, c))


def _frames_of_minivspw_lists(root: str, group: int, split: str, frames: Dict[Tuple[str, str], _Frame]) -> None:
    """The MiniVSPW files of a split, from its list file (no mask is read to find them)."""
    from .minivspw import (FRAMES_RELDIR, IMAGE_FOLDER, IMAGE_SUFFIX, LAYOUT_HELP, LISTS_RELDIR, MASK_FOLDER,
                           MASK_SUFFIX, list_file, read_list_file)

    path = list_file(os.path.join(root, LISTS_RELDIR), split, group - 1)
    if not os.path.isfile(path):
        raise DatasetError(f"MiniVSPW list file not found: {path}\n{LAYOUT_HELP.format(root=root)}")
    listed: Dict[str, List[str]] = {}
    for video, stem in read_list_file(path):
        listed.setdefault(video, []).append(stem)
    frames_dir = os.path.join(root, FRAMES_RELDIR)
    for video, stems in listed.items():
        folder = os.path.join(frames_dir, video, IMAGE_FOLDER)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            names = []               # every listed frame below is then reported missing
        all_frames = sorted(os.path.splitext(n)[0] for n in names if n.lower().endswith(IMAGE_SUFFIX))
        for stem in sorted(set(all_frames) | set(stems)):
            image = os.path.join(folder, stem + IMAGE_SUFFIX)
            mask = os.path.join(frames_dir, video, MASK_FOLDER, stem + MASK_SUFFIX)
            frames.setdefault((image, mask), _Frame(image=image, mask=mask, where=f"video {video}, frame {stem}"))


def _check_frames(frames: Iterable[_Frame], show_progress: bool, workers: int) -> CheckReport:
    frames = list(frames)
    bad: set = set()
    empty: Dict[Any, List[int]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_check_frame, frames)
        for frame, (found, empty_classes) in tqdm(zip(frames, results), total=len(frames), desc="checking frames",
                                                  unit="frame", disable=not show_progress, dynamic_ncols=True):
            bad.update(found)
            for class_id in frame.class_masks:
                counts = empty.setdefault(class_id, [0, 0])
                counts[0] += class_id in empty_classes
                counts[1] += 1
    return CheckReport(bad=sorted(bad), checked=len(frames),
                       empty_segmentations={c: tuple(n) for c, n in sorted(empty.items(), key=lambda i: str(i[0]))})


def find_bad_files(dataset: EpisodeDataset, *, show_progress: bool = False,
                   workers: int = DEFAULT_WORKERS) -> List[BadFile]:
    """Decode every frame and mask that ``dataset`` (a built split) references; the bad ones, sorted."""
    frames: Dict[Tuple[str, str], _Frame] = {}
    _frames_of_dataset(dataset, frames)
    return sorted(set(_check_frames(frames.values(), show_progress, workers).bad + _annotation_problems(dataset)))


def _annotation_problems(dataset: EpisodeDataset) -> List[BadFile]:
    """Problems of the annotation file as a whole: annotations of categories no fold uses (YouTube-VIS)."""
    index = getattr(dataset, "index", None)
    message = index.unknown_categories_message() if hasattr(index, "unknown_categories_message") else None
    return [BadFile(dataset.annotation_file, message)] if message else []


def check_dataset(name: str, root: str, group: int = 1, splits: Sequence[str] = SPLITS, *,
                  show_progress: bool = False, workers: int = DEFAULT_WORKERS) -> Tuple[List[BadFile], int]:
    """``(bad files, frames checked)`` of the given splits of a dataset on disk (deduplicated)."""
    report = check_dataset_report(name, root, group, splits, show_progress=show_progress, workers=workers)
    return report.bad, report.checked


def check_dataset_report(name: str, root: str, group: int = 1, splits: Sequence[str] = SPLITS, *,
                         show_progress: bool = False, workers: int = DEFAULT_WORKERS) -> CheckReport:
    """The :class:`CheckReport` of the given splits of a dataset on disk (frames deduplicated)."""
    from . import build_dataset

    frames: Dict[Tuple[str, str], _Frame] = {}
    problems: List[BadFile] = []
    for split in dict.fromkeys(splits):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if name == "minivspw":
            _frames_of_minivspw_lists(root, group, split, frames)
        else:
            dataset = build_dataset(name, root=root, split=split, group=group, episodes_per_class=1)
            _frames_of_dataset(dataset, frames)
            problems += _annotation_problems(dataset)
    report = _check_frames(frames.values(), show_progress, workers)
    report.bad = sorted(set(report.bad + problems))
    return report


def format_bad_files(bad: Sequence[BadFile], limit: Optional[int] = None) -> str:
    """One ``path: reason`` line per bad file (the first ``limit``, then a count of the rest)."""
    shown = bad if limit is None else bad[:limit]
    lines = [str(b) for b in shown]
    if len(bad) > len(shown):
        lines.append(f"... and {len(bad) - len(shown)} more (python -m dataset.check lists them all)")
    return "\n".join(lines)


def format_empty_segmentations(counts: Dict[Any, Tuple[int, int]]) -> str:
    """Lines for the classes with present-but-empty segmentations, then a total (see the module docstring)."""
    total = sum(empty for empty, _ in counts.values())
    present = sum(n for _, n in counts.values())
    lines = [f"class {class_id}: {empty} of its {n} segmented frames have an empty segmentation"
             for class_id, (empty, n) in counts.items() if empty]
    lines.append(f"present-but-empty segmentations: {total} of {present} class frames in {len(lines)} of "
                 f"{len(counts)} classes" + (" (the authors may draw them as supports with an empty mask; "
                                             "skip_empty_supports=true redraws them)" if total else ""))
    return "\n".join(lines)


def raise_if_bad(bad: Sequence[BadFile]) -> None:
    """DatasetError listing the bad files (for a pre-flight before training), or nothing."""
    if bad:
        raise DatasetError(f"{len(bad)} bad dataset file(s); fix or replace them:\n"
                           + format_bad_files(sorted(bad), MAX_LISTED_IN_ERROR))


# ---- command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from config import DATASET_NAMES, DEFAULTS

    parser = argparse.ArgumentParser(prog="python -m dataset.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULTS.dataset)
    parser.add_argument("--data-root", help="dataset root (default: the config's root of --dataset)")
    parser.add_argument("--group", type=int, default=DEFAULTS.group, help="fold 1..4 (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="splits to check (default: all; training uses train and val, testing test)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="decoding threads (default: %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from config import DEFAULTS, dataset_root

    args = build_parser().parse_args(argv)
    root = args.data_root or dataset_root({**DEFAULTS, "dataset": args.dataset})
    report = check_dataset_report(args.dataset, root, args.group, args.splits, show_progress=sys.stderr.isatty(),
                                  workers=args.workers)
    bad, checked = report.bad, report.checked
    if report.empty_segmentations:
        print(format_empty_segmentations(report.empty_segmentations), file=sys.stderr)
    if bad:
        print(format_bad_files(bad))
        print(f"{len(bad)} bad file(s) among {checked} frames of {args.dataset} group {args.group} "
              f"({', '.join(args.splits)}) under {root}", file=sys.stderr)
        return 2
    print(f"all {checked} frames of {args.dataset} group {args.group} ({', '.join(args.splits)}) under {root} "
          f"decode, with masks of their size", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from utils.runtime import run_cli

    sys.exit(run_cli(lambda argv: main(argv), None, (DatasetError,)))
