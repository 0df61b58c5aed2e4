"""YouTube-VIS 2019 few-shot episodes (docs/protocol.md), on the official ``pycocotools``.

Layout under ``root`` (default ``data/Youtube-VOS``)::

    train/train.json                      # YouTube-VIS 2019 train annotations
    train/JPEGImages/<video>/<frame>.jpg  # frames named in train.json "file_names"

Indexing reads ``train.json`` with :mod:`json` and keeps only metadata: for every video, the
frames in which each category has an instance (a non-``null`` segmentation) and which
annotations hold them. Masks are decoded with :mod:`pycocotools.mask` per frame when an episode
is loaded; segmentations may be polygons, uncompressed RLE (``counts`` list) or compressed RLE
(``counts`` string). The class mask of a frame is the union of that class's instances.

Folds: the 40 categories (ids 1..40) form 4 folds; group ``g`` tests the ids with
``(id - 1) % 4 == g - 1`` (used by the ``val`` and ``test`` splits) and trains on the other 30.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, UnidentifiedImageError

from config import DEFAULTS

from .base import EpisodeDataset
from .episodes import EpisodeSpec
from .errors import DatasetError, check_regular_file, not_a_folder

logger = logging.getLogger(__name__)

DEFAULT_ROOT = DEFAULTS.youtube_vis_root
ANNOTATION_RELPATH = os.path.join("train", "train.json")
FRAMES_RELDIR = os.path.join("train", "JPEGImages")
NUM_CATEGORIES = 40
NUM_FOLDS = 4
MIN_POLYGON_COORDS = 6  # three (x, y) points

LAYOUT_HELP = (
    "Expected layout:\n"
    "  {root}/train/train.json                      (YouTube-VIS 2019 train annotations)\n"
    "  {root}/train/JPEGImages/<video>/<frame>.jpg\n"
    "Get YouTube-VIS 2019 from https://youtube-vos.org/dataset/vis/ (train split), or write a "
    "small synthetic dataset with:\n"
    "  python -m synthetic youtube_vis --root {root}")


def fold_classes(group: int, split: str) -> list[int]:
    """Category ids of a fold: ``test``/``val`` -> the 10 held-out ids, ``train`` -> the other 30."""
    if group not in range(1, NUM_FOLDS + 1):
        raise DatasetError(f"group (fold) must be 1, 2, 3 or 4, got {group!r}")
    held_out = [c for c in range(1, NUM_CATEGORIES + 1) if (c - 1) % NUM_FOLDS == group - 1]
    if split == "train":
        return [c for c in range(1, NUM_CATEGORIES + 1) if c not in held_out]
    return held_out


@dataclass
class VideoRecord:
    """Metadata of one video of train.json (no masks)."""

    name: str
    file_names: list[str]
    height: int
    width: int
    class_frames: dict[int, list[int]] = field(default_factory=dict)       # class -> frame indices
    class_annotations: dict[int, list[int]] = field(default_factory=dict)  # class -> annotation rows


@dataclass
class YouTubeVISIndex:
    """What indexing keeps: video records and the raw per-frame segmentations of each annotation."""

    path: str
    videos: dict[str, VideoRecord]
    segmentations: list[list[Any]]      # annotation row -> per-frame segmentation or None
    category_names: dict[int, str]
    arrays: "NumberArrayStore"          # the long number arrays left in the file (see below)
    # category id outside 1..NUM_CATEGORIES -> its number of annotations (no fold uses them)
    unknown_categories: dict[int, int] = field(default_factory=dict)
    # class -> ids of its annotations whose every segmentation is degenerate (decodes to an empty mask)
    degenerate_annotations: dict[int, list] = field(default_factory=dict)
    annotation_counts: dict[int, int] = field(default_factory=dict)       # class -> its annotations

    def check_degenerate(self, classes: Sequence[int], split: str) -> None:
        """DatasetError when every annotation of ``classes`` is degenerate (training would learn from
        empty masks); a warning naming their count and ids when some are."""
        bad = {c: self.degenerate_annotations[c] for c in classes if self.degenerate_annotations.get(c)}
        if not bad:
            return
        count, total = sum(map(len, bad.values())), sum(self.annotation_counts.get(c, 0) for c in classes)
        ids = [i for c in sorted(bad) for i in bad[c]]
        what = (f"{count} of the {total} annotations of the {split} classes are degenerate (every polygon has "
                f"fewer than 3 points, so every mask is empty): annotation id(s) "
                f"{', '.join(map(str, ids[:10]))}{', ...' if len(ids) > 10 else ''} of class(es) "
                f"{', '.join(map(str, sorted(bad)))}")
        if count == total:
            raise DatasetError(f"{self.path}: {what}; there is nothing to learn from. Run python -m dataset.check "
                               f"to list every bad frame")
        logger.warning("%s: %s; their frames count as frames without the object", self.path, what)

    def unknown_categories_message(self) -> str | None:
        """Names the annotations of categories no fold uses (id: count), or None if there are none."""
        if not self.unknown_categories:
            return None
        counts = ", ".join(f"id {c}: {n}" for c, n in sorted(self.unknown_categories.items()))
        return (f"{sum(self.unknown_categories.values())} annotation(s) have category ids outside "
                f"1..{NUM_CATEGORIES}, the YouTube-VIS 2019 classes ({counts}); no fold uses them")

    def videos_of_class(self, class_id: int) -> list[str]:
        return sorted(name for name, rec in self.videos.items() if class_id in rec.class_frames)


def _fail_structure(path: str, what: str) -> DatasetError:
    return DatasetError(f"{path}: {what} (expected a YouTube-VIS 2019 train.json with 'videos', "
                        f"'annotations' and 'categories')")


def index_annotations(path: str) -> YouTubeVISIndex:
    """Read ``train.json`` and index which frames hold which class (metadata only)."""
    stat = _stat_or_fail(path)
    return _index_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def _stat_or_fail(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {path}") from None


# Long JSON number arrays (RLE counts, polygon coordinates) are most of train.json's bytes and
# most of the cost of parsing it. Indexing skims them: each one is replaced by a placeholder
# string "#<k>" before parsing, and only its byte span in the file is kept; the array itself is
# parsed from the file when a mask that needs it is decoded. The placeholder cannot be confused
# with a compressed RLE string, whose characters lie in '0'..'o'.
LONG_NUMBER_ARRAY = re.compile(rb"\[[-+0-9.,eE \t\r\n]{64,}\]")
PLACEHOLDER_PREFIX = "#"


class NumberArrayStore:
    """Byte spans of the skimmed number arrays of one annotation file; reads them on demand."""

    def __init__(self, path: str, size: int, mtime_ns: int):
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self.starts = np.zeros(0, dtype=np.int64)
        self.ends = np.zeros(0, dtype=np.int64)
        self._handle = None
        self._handle_pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_handle_pid"] = None, None
        return state

    def _file(self):
        if self._handle is None or self._handle_pid != os.getpid():
            stat = _stat_or_fail(self.path)
            if (stat.st_size, stat.st_mtime_ns) != (self.size, self.mtime_ns):
                raise DatasetError(f"{self.path} changed after it was indexed; restart to index it again")
            self._handle, self._handle_pid = open(self.path, "rb"), os.getpid()
        return self._handle

    def resolve(self, value: Any) -> Any:
        """The array a placeholder stands for (other values are returned unchanged)."""
        if not (isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX)):
            return value
        try:
            k = int(value[len(PLACEHOLDER_PREFIX):])
            start, end = int(self.starts[k]), int(self.ends[k])
        except (ValueError, IndexError):
            raise DatasetError(f"{self.path}: unexpected string {value[:20]!r} where a number array "
                               f"was expected") from None
        handle = self._file()
        try:
            # pread: no shared file offset, so threads (dataset.check decodes in a pool) cannot race
            return json.loads(os.pread(handle.fileno(), end - start, start))
        except ValueError:
            raise DatasetError(f"{self.path} changed after it was indexed; restart to index it "
                               f"again") from None


def _load_json_skimming_arrays(path: str, arrays: NumberArrayStore) -> Any:
    """Parse ``path`` with its long number arrays replaced by placeholders (spans -> ``arrays``)."""
    starts: list[int] = []
    ends: list[int] = []

    def placeholder(match: "re.Match[bytes]") -> bytes:
        starts.append(match.start())
        ends.append(match.end())
        return b'"%s%d"' % (PLACEHOLDER_PREFIX.encode(), len(starts) - 1)

    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise DatasetError(f"{path} is empty; expected the YouTube-VIS 2019 train.json")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                skimmed = LONG_NUMBER_ARRAY.sub(placeholder, mapped)
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror}") from None
    try:
        data = json.loads(skimmed)
    except (ValueError, UnicodeDecodeError):
        # Either the file is corrupt, or a string happened to contain a long number array.
        # Parse the original text: it gives the exact error position, or the data.
        data = _load_json_plain(path)
        starts, ends = [], []
    arrays.starts = np.asarray(starts, dtype=np.int64)
    arrays.ends = np.asarray(ends, dtype=np.int64)
    return data


def _load_json_plain(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column "
                           f"{err.colno}); the file is corrupt or truncated: download or extract "
                           f"YouTube-VIS 2019 train.json again") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not a UTF-8 JSON file ({err.reason}); expected the "
                           f"YouTube-VIS 2019 train.json") from None
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror}") from None


@lru_cache(maxsize=2)
def _index_cached(path: str, size: int, mtime_ns: int) -> YouTubeVISIndex:
    arrays = NumberArrayStore(path, size, mtime_ns)
    data = _load_json_skimming_arrays(path, arrays)
    if not isinstance(data, dict):
        raise _fail_structure(path, f"top level is a {type(data).__name__}, not an object")
    for key in ("videos", "annotations"):
        if not isinstance(data.get(key), list):
            raise _fail_structure(path, f"missing list '{key}'")

    videos_by_id: dict[Any, VideoRecord] = {}
    position_of_id: dict[Any, int] = {}
    for position, video in enumerate(data["videos"]):
        try:
            file_names = list(video["file_names"])
            record = VideoRecord(name=file_names[0].replace("\\", "/").split("/")[0],
                                 file_names=file_names, height=int(video["height"]),
                                 width=int(video["width"]))
            video_id = video["id"]
            first = position_of_id.setdefault(video_id, position)
        except (KeyError, TypeError, IndexError, ValueError):
            raise _fail_structure(path, f"video entry #{position} lacks 'id', 'file_names', "
                                  f"'height' or 'width'") from None
        if first != position:       # the annotations of one would be read as the other's
            raise DatasetError(
                f"{path}: video id {video_id!r} is given twice, to video entry #{first} (folder "
                f"{videos_by_id[video_id].name!r}) and to entry #{position} (folder {record.name!r}); each "
                f"video needs its own id (the annotations name their video by it)")
        videos_by_id[video_id] = record

    segmentations: list[list[Any]] = []
    unknown_categories: dict[int, int] = {}
    annotation_counts: dict[int, int] = {}
    degenerate: dict[int, list] = {}
    for position, ann in enumerate(data["annotations"]):
        try:
            record = videos_by_id[ann["video_id"]]
            class_id = int(ann["category_id"])
            segs = ann["segmentations"]
        except KeyError as err:
            raise _fail_structure(path, f"annotation #{position} (id {ann.get('id')}) has no "
                                  f"{err.args[0]!r} or refers to an unknown video") from None
        except (TypeError, ValueError):
            raise _fail_structure(path, f"annotation #{position} is malformed") from None
        if not isinstance(segs, list) or len(segs) != len(record.file_names):
            raise DatasetError(
                f"{path}: annotation id {ann.get('id')} of video {record.name} has "
                f"{len(segs) if isinstance(segs, list) else 'no'} segmentations for "
                f"{len(record.file_names)} frames (expected one per frame, null where absent)")
        if not 1 <= class_id <= NUM_CATEGORIES:
            unknown_categories[class_id] = unknown_categories.get(class_id, 0) + 1
        present = [i for i, seg in enumerate(segs) if seg is not None]
        if not present:
            continue
        annotation_counts[class_id] = annotation_counts.get(class_id, 0) + 1
        if all(_is_degenerate_polygon(segs[i]) for i in present):
            degenerate.setdefault(class_id, []).append(ann.get("id", position))
        row = len(segmentations)
        segmentations.append(segs)
        record.class_annotations.setdefault(class_id, []).append(row)
        frames = record.class_frames.setdefault(class_id, [])
        frames.extend(present)
    for record in videos_by_id.values():
        for class_id, frames in record.class_frames.items():
            record.class_frames[class_id] = sorted(set(frames))

    names = {}
    for category in data.get("categories") or []:
        if isinstance(category, dict) and "id" in category:
            names[int(category["id"])] = str(category.get("name", category["id"]))
    videos = {}
    for record in videos_by_id.values():
        if record.name in videos:
            raise _fail_structure(path, f"two videos share the folder name {record.name!r}")
        videos[record.name] = record
    logger.info("indexed %s: %d videos, %d annotations", path, len(videos), len(segmentations))
    index = YouTubeVISIndex(path=path, videos=videos, segmentations=segmentations,
                            category_names=names, arrays=arrays, unknown_categories=unknown_categories,
                            degenerate_annotations=degenerate, annotation_counts=annotation_counts)
    if index.unknown_categories_message():
        logger.warning("%s: %s", path, index.unknown_categories_message())   # once: the index is cached
    return index


def _is_degenerate_polygon(segmentation: Any) -> bool:
    """A polygon segmentation whose every polygon is too short to enclose anything (what
    :func:`decode_segmentation` drops), told without reading skimmed arrays (those are long)."""
    return isinstance(segmentation, list) and all(
        isinstance(p, list) and len(p) < MIN_POLYGON_COORDS for p in segmentation)


def _unchanged(value: Any) -> Any:
    return value


def decode_segmentation(segmentation: Any, height: int, width: int, where: str,
                        resolve: Callable[[Any], Any] = _unchanged) -> np.ndarray:
    """One instance mask ``uint8 [height, width]`` from a polygon / uncompressed / compressed RLE.

    ``resolve`` maps a skimmed-array placeholder back to its number list (see
    :class:`NumberArrayStore`); ``where`` names the annotation in error messages.
    """
    if isinstance(segmentation, list):
        polygons = [resolve(p) for p in segmentation]
        polygons = [p for p in polygons if isinstance(p, list) and len(p) >= MIN_POLYGON_COORDS]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        try:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        except (TypeError, ValueError) as err:
            raise DatasetError(f"{where}: malformed polygon ({err})") from None
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size")
        if not isinstance(size, list) or [int(s) for s in size] != [height, width]:
            raise DatasetError(f"{where}: RLE size {size} differs from the video size "
                               f"[{height}, {width}]")
        counts = resolve(segmentation["counts"])
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise DatasetError(f"{where}: uncompressed RLE counts sum to {sum(counts)}, "
                                   f"expected height*width = {height * width}")
            rle = mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"counts": counts, "size": [height, width]}
        else:
            raise DatasetError(f"{where}: RLE 'counts' must be a list or a string, got "
                               f"{type(counts).__name__}")
    else:
        raise DatasetError(f"{where}: unknown segmentation format {type(segmentation).__name__} "
                           f"(expected polygons, or an RLE with 'counts' and 'size')")
    try:
        mask = mask_utils.decode(rle)
    except Exception as err:  # pycocotools raises bare exceptions on corrupt strings
        raise DatasetError(f"{where}: cannot decode the RLE ({err})") from None
    return np.ascontiguousarray(mask, dtype=np.uint8)


class YouTubeVISDataset(EpisodeDataset):
    """Few-shot episodes from YouTube-VIS 2019 (see :class:`dataset.base.EpisodeDataset`).

    The query sequence of a video for a class is the list of frames where the class is present
    (train/val: clips chosen among them; test: all of them, in order). ``annotation_file`` and
    ``frames_dir`` default to their places under ``root``; ``split_settings`` (episodes_per_class,
    seed, augment) go to :class:`dataset.base.EpisodeDataset`.
    """

    dataset_name = "youtube_vis"

    OPTIONS = ("annotation_file", "frames_dir")     # what build_dataset passes on besides the split's settings

    def __init__(self, root: str = DEFAULT_ROOT, split: str = "train", group: int = DEFAULTS.group,
                 spec: EpisodeSpec = EpisodeSpec(), *, annotation_file: str | None = None,
                 frames_dir: str | None = None, **split_settings):
        super().__init__(split, group, spec, **split_settings)
        self.root = str(root)
        self.annotation_file = annotation_file or os.path.join(self.root, ANNOTATION_RELPATH)
        self.frames_dir = frames_dir or os.path.join(self.root, FRAMES_RELDIR)
        self._check_layout()
        self.index = index_annotations(self.annotation_file)
        every_class = range(1, NUM_CATEGORIES + 1)
        self._videos_by_class = {c: self.index.videos_of_class(c) for c in every_class}
        self._set_classes(fold_classes(group, split), self.annotation_file, dataset_classes=every_class)
        self.index.check_degenerate(self.classes, split)

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root) and not os.path.isfile(self.annotation_file):
            raise DatasetError(f"YouTube-VIS dataset directory not found: {self.root}{not_a_folder(self.root)}\n"
                               + LAYOUT_HELP.format(root=self.root))
        if not os.path.isfile(self.annotation_file):
            raise DatasetError(f"YouTube-VIS annotation file not found: {self.annotation_file}\n"
                               + LAYOUT_HELP.format(root=self.root))
        if not os.path.isdir(self.frames_dir):
            raise DatasetError(f"YouTube-VIS frame directory not found: {self.frames_dir}\n"
                               + LAYOUT_HELP.format(root=self.root))

    # --------------------------------------------------------------- EpisodeDataset interface
    def videos_of_class(self, class_id: int) -> list[str]:
        return self._videos_by_class.get(class_id, [])

    def query_frames_of(self, video: str, class_id: int) -> list[int]:
        return self.index.videos[video].class_frames[class_id]

    def support_frames_of(self, video: str, class_id: int) -> list[int]:
        return self.index.videos[video].class_frames[class_id]

    def class_name(self, class_id: int) -> str:
        return self.index.category_names.get(int(class_id), str(class_id))

    def frame_path(self, video: str, frame: int) -> str:
        return os.path.join(self.frames_dir, self.index.videos[video].file_names[frame])

    def frame_name(self, video: str, frame: int) -> str:
        return os.path.splitext(os.path.basename(self.index.videos[video].file_names[frame]))[0]

    def load_image(self, video: str, frame: int) -> np.ndarray:
        path = self.frame_path(video, frame)
        check_regular_file(path, "frame file")
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(f"missing frame file {path} (video {video}, frame "
                               f"{self.frame_name(video, frame)} listed in "
                               f"{self.annotation_file})") from None
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"cannot read frame file {path} (video {video}, frame "
                               f"{self.frame_name(video, frame)}): {err}") from None

    def load_mask(self, video: str, frame: int, class_id: int) -> np.ndarray:
        """Union of the frame's instances of ``class_id``: ``uint8 [h, w]`` 0/1."""
        record = self.index.videos[video]
        mask = np.zeros((record.height, record.width), dtype=np.uint8)
        for row in record.class_annotations.get(class_id, []):
            segmentation = self.index.segmentations[row][frame]
            if segmentation is not None:
                where = f"{self.annotation_file}: video {video}, frame {self.frame_name(video, frame)}"
                mask |= decode_segmentation(segmentation, record.height, record.width, where,
                                            self.index.arrays.resolve)
        return mask
