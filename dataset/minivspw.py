"""MiniVSPW few-shot episodes (the TTI split of VSPW 480p, docs/protocol.md).

Layout under ``root`` (default ``data/VSPW_480p``)::

    data/<video>/origin/<frame>.jpg
    data/<video>/mask/<frame>.png                 # VSPW class ids
    lists/nminivspw_pascal/{train,val,test}_<i>.txt        # "<video> <video>/mask/<frame>.png"
    lists/nminivspw_pascal/class_{train,val,test}_<i>.json # {"<VSPW id>": "<name>"}

with fold index ``i = group - 1``. The lists are produced by ``python -m dataset.minivspw_lists``.

A video contains a class when one of its listed frames has a pixel of it; those listed frames are
the support candidates. The query sequence of a video is *all* its frames (``origin``), in order,
as in the authors' loader: train/val episodes choose clips among them, the test split uses the
whole video (frames where the class is absent have empty masks).

The per-class index (which listed frames of which video hold which class) needs every listed
mask to be read once; it is cached next to the lists as ``.index_<split>_<i>.json`` (written
atomically, keyed by the list file's SHA-1 and the class ids, rebuilt when they change).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .base import EpisodeDataset
from .episodes import CLIP_LENGTH
from .errors import DatasetError
from utils.fileio import atomic_write_json

logger = logging.getLogger(__name__)

DEFAULT_ROOT = os.path.join("data", "VSPW_480p")
FRAMES_RELDIR = "data"
LISTS_RELDIR = os.path.join("lists", "nminivspw_pascal")
SPLIT_FILE_NAMES = {"train": "train", "val": "val", "test": "test"}
CACHE_VERSION = 1
IMAGE_FOLDER, MASK_FOLDER = "origin", "mask"
IMAGE_SUFFIX, MASK_SUFFIX = ".jpg", ".png"

LAYOUT_HELP = (
    "Expected layout:\n"
    "  {root}/data/<video>/origin/<frame>.jpg\n"
    "  {root}/data/<video>/mask/<frame>.png           (VSPW class ids)\n"
    "  {root}/lists/nminivspw_pascal/{{train,val,test}}_<fold>.txt and class_{{train,val,test}}_<fold>.json\n"
    "Get VSPW 480p from https://github.com/sssdddwww2/vspw_dataset_download, then generate the "
    "MiniVSPW lists with:\n"
    "  python -m dataset.minivspw_lists --vspw-root {root}\n"
    "or write a small synthetic dataset (lists included) with:\n"
    "  python -m dataset.synthetic vspw --root {root}")


def list_file(lists_dir: str, split: str, fold: int) -> str:
    return os.path.join(lists_dir, f"{SPLIT_FILE_NAMES[split]}_{fold}.txt")


def class_file(lists_dir: str, split: str, fold: int) -> str:
    return os.path.join(lists_dir, f"class_{SPLIT_FILE_NAMES[split]}_{fold}.json")


def cache_file(lists_dir: str, split: str, fold: int) -> str:
    return os.path.join(lists_dir, f".index_{SPLIT_FILE_NAMES[split]}_{fold}.json")


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_class_file(path: str) -> dict[int, str]:
    """``{VSPW id: name}`` from a ``class_<split>_<i>.json`` file."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
        classes = {int(key): str(name) for key, name in data.items()}
    except FileNotFoundError:
        raise DatasetError(f"MiniVSPW class file not found: {path}") from None
    except (ValueError, AttributeError, TypeError) as err:
        raise DatasetError(f"{path}: expected a JSON object mapping VSPW class ids (strings of "
                           f"integers) to names ({err})") from None
    if not classes:
        raise DatasetError(f"{path} lists no class")
    return classes


def read_list_file(path: str) -> list[tuple[str, str]]:
    """``[(video, frame stem)]`` from a list file of ``<video> <video>/mask/<frame>.png`` lines."""
    entries = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise DatasetError(f"{path}, line {number}: expected '<video> <video>/mask/<frame>.png', "
                                       f"got {line.strip()!r}")
                video, mask_path = parts
                stem = os.path.splitext(os.path.basename(mask_path))[0]
                entries.append((video, stem))
    except FileNotFoundError:
        raise DatasetError(f"MiniVSPW list file not found: {path}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not a UTF-8 text list") from None
    return entries


def read_label_image(path: str, what: str) -> np.ndarray:
    """A VSPW mask PNG as ``uint8 [h, w]`` class ids."""
    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except FileNotFoundError:
        raise DatasetError(f"missing mask file {path} ({what})") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot read mask file {path} ({what}): {err}") from None
    if labels.ndim != 2:
        raise DatasetError(f"mask file {path} ({what}) has shape {labels.shape}; expected a "
                           f"single-channel image of class ids")
    return labels


def build_index(frames_dir: str, entries: Sequence[tuple[str, str]], class_ids: Sequence[int],
                show_progress: bool = True) -> dict[int, dict[str, list[str]]]:
    """``{class: {video: [frame stems]}}`` of the listed frames holding each class (>= 1 pixel)."""
    wanted = np.zeros(256, dtype=bool)
    wanted[[c for c in class_ids if 0 <= c < 256]] = True
    index: dict[int, dict[str, list[str]]] = {int(c): {} for c in class_ids}
    for video, stem in tqdm(entries, desc="MiniVSPW index", unit="frame", disable=not show_progress):
        path = os.path.join(frames_dir, video, MASK_FOLDER, stem + MASK_SUFFIX)
        labels = read_label_image(path, f"video {video}, frame {stem}")
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[:256] * wanted)
        for class_id in present:
            frames = index[int(class_id)].setdefault(video, [])
            if not frames or frames[-1] != stem:
                frames.append(stem)
    return _sorted_index(index)


def _sorted_index(index: dict[int, dict[str, list[str]]]) -> dict[int, dict[str, list[str]]]:
    return {c: {v: sorted(set(f)) for v, f in sorted(videos.items())} for c, videos in index.items()}


def write_index_cache(path: str, list_path: str, class_ids: Sequence[int],
                      index: dict[int, dict[str, list[str]]]) -> None:
    payload = {"version": CACHE_VERSION, "list_file": os.path.basename(list_path),
               "list_sha1": file_sha1(list_path), "classes": [int(c) for c in class_ids],
               "videos": {str(c): videos for c, videos in index.items()}}
    atomic_write_json(path, payload, indent=None)


def load_index_cache(path: str, list_path: str, class_ids: Sequence[int]):
    """The cached index, or None when absent, stale or unreadable."""
    try:
        with open(path, "rb") as handle:
            payload = json.load(handle)
        if (payload.get("version") != CACHE_VERSION
                or payload.get("classes") != [int(c) for c in class_ids]
                or payload.get("list_sha1") != file_sha1(list_path)):
            return None
        return {int(c): {v: list(f) for v, f in videos.items()} for c, videos in payload["videos"].items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


class MiniVSPWDataset(EpisodeDataset):
    """Few-shot episodes from MiniVSPW (see :class:`dataset.base.EpisodeDataset`).

    Frame keys are frame stems (file names without extension).
    """

    dataset_name = "minivspw"

    def __init__(self, root: str = DEFAULT_ROOT, split: str = "train", group: int = 1,
                 image_size: Sequence[int] = (240, 424), query_frames: int = 15,
                 support_shots: int = 5, episodes_per_class: int = 100, seed: int = 42,
                 augment: bool | None = None, clip_length: int = CLIP_LENGTH,
                 lists_dir: str | None = None, show_progress: bool = True):
        super().__init__(split=split, group=group, image_size=image_size, query_frames=query_frames,
                         support_shots=support_shots, episodes_per_class=episodes_per_class,
                         seed=seed, augment=augment, clip_length=clip_length)
        self.root = str(root)
        self.frames_dir = os.path.join(self.root, FRAMES_RELDIR)
        self.lists_dir = lists_dir or os.path.join(self.root, LISTS_RELDIR)
        fold = self.group - 1
        self.list_path = list_file(self.lists_dir, split, fold)
        class_path = class_file(self.lists_dir, split, fold)
        self._check_layout(class_path)
        self.class_names = read_class_file(class_path)
        class_ids = list(self.class_names)
        cache_path = cache_file(self.lists_dir, split, fold)
        index = load_index_cache(cache_path, self.list_path, class_ids)
        if index is None:
            entries = read_list_file(self.list_path)
            logger.info("indexing %d listed MiniVSPW frames of %s (cached afterwards)", len(entries),
                        self.list_path)
            index = build_index(self.frames_dir, entries, class_ids, show_progress)
            try:
                write_index_cache(cache_path, self.list_path, class_ids, index)
            except OSError as err:
                logger.warning("cannot write the MiniVSPW index cache %s (%s); it will be rebuilt "
                               "next time", cache_path, err.strerror)
        self._index = index
        self._videos_by_class = {c: sorted(index.get(c, {})) for c in class_ids}
        self._frames_of_video: dict[str, list[str]] = {}
        self._set_classes(class_ids, self.list_path)

    def _check_layout(self, class_path: str) -> None:
        help_text = LAYOUT_HELP.format(root=self.root)
        if not os.path.isdir(self.root):
            raise DatasetError(f"VSPW dataset directory not found: {self.root}\n{help_text}")
        if not os.path.isdir(self.frames_dir):
            raise DatasetError(f"VSPW frame directory not found: {self.frames_dir}\n{help_text}")
        for path in (self.list_path, class_path):
            if not os.path.isfile(path):
                raise DatasetError(f"MiniVSPW list file not found: {path}\n{help_text}")

    # --------------------------------------------------------------- EpisodeDataset interface
    def videos_of_class(self, class_id: int) -> list[str]:
        return self._videos_by_class.get(class_id, [])

    def _all_frames(self, video: str) -> list[str]:
        frames = self._frames_of_video.get(video)
        if frames is None:
            folder = os.path.join(self.frames_dir, video, IMAGE_FOLDER)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                raise DatasetError(f"missing frame folder {folder} (video {video} is listed in "
                                   f"{self.list_path})") from None
            frames = sorted(os.path.splitext(n)[0] for n in names if n.lower().endswith(IMAGE_SUFFIX))
            if not frames:
                raise DatasetError(f"frame folder {folder} (video {video}) holds no {IMAGE_SUFFIX} frame")
            self._frames_of_video[video] = frames
        return frames

    def query_frames_of(self, video: str, class_id: int) -> list[Any]:
        return self._all_frames(video)

    def support_frames_of(self, video: str, class_id: int) -> list[Any]:
        return self._index[class_id][video]

    def class_name(self, class_id: int) -> str:
        return self.class_names.get(int(class_id), str(class_id))

    def frame_name(self, video: str, frame: Any) -> str:
        return str(frame)

    def load_image(self, video: str, frame: Any) -> np.ndarray:
        path = os.path.join(self.frames_dir, video, IMAGE_FOLDER, f"{frame}{IMAGE_SUFFIX}")
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(f"missing frame file {path} (video {video}, frame {frame})") from None
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"cannot read frame file {path} (video {video}, frame {frame}): "
                               f"{err}") from None

    def load_mask(self, video: str, frame: Any, class_id: int) -> np.ndarray:
        path = os.path.join(self.frames_dir, video, MASK_FOLDER, f"{frame}{MASK_SUFFIX}")
        labels = read_label_image(path, f"video {video}, frame {frame}")
        return (labels == class_id).astype(np.uint8)
