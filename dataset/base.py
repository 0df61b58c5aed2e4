"""The episodic dataset shared by YouTube-VIS 2019 and MiniVSPW (docs/protocol.md).

A subclass indexes its files and provides, per class, the videos containing it and the frames
of a video usable as query / support; this class turns them into episodes.

Splits:

* ``train`` / ``val``: ``len(classes) * episodes_per_class`` fixed-shape episodes; index ``i``
  belongs to class ``classes[i // episodes_per_class]``. The query is one random video of the
  class (``query_frames`` frames = ``query_frames / clip_length`` clips chosen by
  :func:`episodes.select_query_clips`); the ``support_shots`` supports are one random class
  frame each from ``support_shots`` distinct random videos of the class (these may include
  the query video, as in the reference training).
* ``test``: every video of every class once, in class order then video order; the query is the
  whole frame sequence of the video for the class; the supports come from the *other* videos of
  the class.

Documented behaviour for small or odd data:

* fewer videos than ``support_shots`` (after excluding the query video at test time): every
  available video is used once and the remaining supports are drawn again from the same videos
  (with their own random frames); a warning is logged once per class. A test class with a single
  video takes its supports from that same video (warning).
* a support frame whose class segmentation is present but empty (no pixels) is kept, as the
  authors do (logged once per class; ``python -m dataset.check`` counts such segmentations).
  With ``skip_empty_supports=True`` (a deviation) it is replaced by another frame of the class
  (same video first, then the other videos), up to ``MAX_SUPPORT_TRIES`` frames; if all are empty
  the first draw is kept (empty mask) and a warning is logged. Both draw the same frame when its
  mask is not empty (one generator, the same draws).
* a class without any video is left out of ``classes`` (one warning naming all of them, once per
  process); no class left -> DatasetError.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset

from config import DEFAULTS

from .episodes import EpisodeKey, EpisodeSpec, choose_videos, item_rng, select_query_clips
from .errors import DatasetError, check_integer
from .transforms import FastTrainTransform, TestTransform, TrainTransform

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GROUPS = (1, 2, 3, 4)
MAX_SUPPORT_TRIES = 20
_REPORTED_EMPTY_CLASSES: set[str] = set()   # warnings about classes without videos already logged


class EpisodeDataset(Dataset):
    """Base class; see the module docstring for the episode rules.

    ``spec`` (:class:`dataset.episodes.EpisodeSpec`) says what an episode is: frames, clips,
    supports, image size and the deviations. Query frames and supports are letterboxed as two
    lists, each with its first frame's size (the authors' rule) unless ``spec.letterbox_per_frame``;
    ``spec.fast_augment`` applies to augmented splits only (:class:`dataset.transforms.FastTrainTransform`).
    ``episodes_per_class``, ``seed`` and ``augment`` (default: ``split == "train"``) are the split's.

    Items (dicts):
        query_img ``[Tq,3,H,W]`` float32 (ImageNet-normalised), query_mask ``[Tq,1,H,W]`` 0/1,
        support_img ``[S,3,H,W]``, support_mask ``[S,1,H,W]``, class_id int, video str (query
        video), support_videos list[str]; the test split adds frame_names list[str] (one per
        query frame) and has a variable ``Tq``.
    """

    dataset_name = "episodes"

    def __init__(self, split: str = "train", group: int = DEFAULTS.group, spec: EpisodeSpec = EpisodeSpec(), *,
                 episodes_per_class: int = DEFAULTS.episodes_per_class, seed: int = DEFAULTS.seed,
                 augment: bool | None = None):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if group not in GROUPS:
            raise DatasetError(f"group (fold) must be 1, 2, 3 or 4, got {group!r}")
        if not isinstance(spec, EpisodeSpec):
            raise DatasetError(f"spec must be a dataset.EpisodeSpec, got {type(spec).__name__}")
        self.spec = spec
        self.split = split
        self.group = int(group)
        self.episodes_per_class = check_integer("episodes_per_class", episodes_per_class, minimum=1)
        self.seed = check_integer("seed", seed, minimum=0)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.fast_augment = spec.fast_augment and self.augment        # evaluation is never augmented
        transform = FastTrainTransform if self.fast_augment else TrainTransform if self.augment else TestTransform
        self.transform = transform(spec.image_size, letterbox_per_frame=spec.letterbox_per_frame)
        self.epoch = 0
        self.classes: list[int] = []
        self._test_items: list[tuple[int, str]] = []
        self._warned: set[tuple[str, Any]] = set()

    # ----------------------------------------------------------------- subclass interface
    def videos_of_class(self, class_id: int) -> list[str]:
        """Videos containing ``class_id`` (a class of this split, or of ``dataset_classes``), sorted."""
        raise NotImplementedError

    def query_frames_of(self, video: str, class_id: int) -> list[int]:
        """Frame indices of ``video`` forming its query sequence for ``class_id``, in order."""
        raise NotImplementedError

    def support_frames_of(self, video: str, class_id: int) -> list[int]:
        """Frame indices of ``video`` where ``class_id`` is present (support candidates)."""
        raise NotImplementedError

    def load_image(self, video: str, frame: int) -> np.ndarray:
        """RGB frame ``uint8 [h, w, 3]``."""
        raise NotImplementedError

    def load_mask(self, video: str, frame: int, class_id: int) -> np.ndarray:
        """Class mask ``uint8 [h, w]`` (0/1) of the frame."""
        raise NotImplementedError

    def frame_name(self, video: str, frame: int) -> str:
        """Short name of a frame (its file name without extension)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- setup
    def _set_classes(self, candidate_classes: Sequence[int], source: str,
                     dataset_classes: Sequence[int] | None = None) -> None:
        """Keep the candidate classes that have videos; build the test enumeration.

        The classes without a video are named in one warning: those of ``dataset_classes``
        (every class of the dataset, when the subclass can list them) or else of the candidates.
        The same warning is not repeated in a process (train.py and test.py build several splits).
        """
        kept = [int(c) for c in candidate_classes if self.videos_of_class(c)]
        listed = [int(c) for c in (candidate_classes if dataset_classes is None else dataset_classes)]
        empty = [c for c in listed if not self.videos_of_class(c)]
        scope = "classes" if dataset_classes is not None else f"{self.split} classes of group {self.group}"
        message = (f"{source}: {len(empty)} of the {len(listed)} {scope} have no video in this dataset and "
                   f"are left out: {', '.join(str(c) for c in empty)}")
        if empty and message not in _REPORTED_EMPTY_CLASSES:
            _REPORTED_EMPTY_CLASSES.add(message)
            logger.warning("%s", message)
        if not kept:
            raise DatasetError(f"{source}: none of the {self.split} classes of group {self.group} "
                               f"({', '.join(str(c) for c in candidate_classes)}) has a video")
        self.classes = kept
        if self.split == "test":
            self._test_items = [(c, v) for c in kept for v in self.videos_of_class(c)]

    # ----------------------------------------------------------------- dataset protocol
    def __len__(self) -> int:
        if self.split == "test":
            return len(self._test_items)
        return len(self.classes) * self.episodes_per_class

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; episode content is a pure function of (seed, epoch, index)."""
        if int(epoch) < 0:
            raise DatasetError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def class_of_index(self, index: int | EpisodeKey) -> int:
        """Class id of item ``index`` (no I/O; used by the batch sampler)."""
        self._check_index(index)
        if isinstance(index, EpisodeKey):
            return index.class_id
        if self.split == "test":
            return self._test_items[index][0]
        return self.classes[index // self.episodes_per_class]

    def class_name(self, class_id: int) -> str:
        """Human-readable name of a class (its id when the dataset has no names)."""
        return str(class_id)

    def test_item(self, index: int) -> tuple[int, str]:
        """``(class_id, video)`` of test item ``index``."""
        if self.split != "test":
            raise DatasetError("test_item() is only defined for the test split")
        self._check_index(index)
        return self._test_items[index]

    def _check_index(self, index: int | EpisodeKey) -> None:
        if isinstance(index, EpisodeKey):
            if self.split == "test":
                raise DatasetError("an EpisodeKey (an episode drawn for another class) is for train/val splits only")
            if index.class_id not in self.classes:
                raise DatasetError(f"EpisodeKey class {index.class_id} is not a {self.split} class "
                                   f"({', '.join(str(c) for c in self.classes)})")
            index = index.index
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")

    def __getitem__(self, index: int | EpisodeKey | tuple[int, int | EpisodeKey]) -> dict:
        """Item ``index`` of the current epoch; an :class:`EpisodeKey`: a fresh episode of its class
        (train/val); an ``(epoch, index or key)`` pair: the same of ``epoch`` (the training loader's
        persistent workers do not see ``set_epoch``: vipmt.build.EpochTaggedBatches)."""
        epoch = self.epoch
        if isinstance(index, tuple) and not isinstance(index, EpisodeKey):
            epoch, index = index
        self._check_index(index)
        if isinstance(index, EpisodeKey):
            return self._train_episode(index.index, item_rng(self.seed, epoch, index.index, index.class_id),
                                       class_id=index.class_id)
        rng = item_rng(self.seed, epoch, index)
        if self.split == "test":
            return self._test_episode(index, rng)
        return self._train_episode(index, rng)

    # ----------------------------------------------------------------- episodes
    def _train_episode(self, index: int, rng: np.random.Generator, class_id: int | None = None) -> dict:
        class_id = self.class_of_index(index) if class_id is None else class_id
        videos = self.videos_of_class(class_id)
        query_video = videos[int(rng.integers(len(videos)))]
        self._warn_if_few(class_id, len(videos))
        support_videos = choose_videos(videos, self.spec.support_shots, rng)
        num_clips = self.spec.query_frames // self.spec.clip_length
        frames = select_query_clips(self.query_frames_of(query_video, class_id), num_clips, rng,
                                    self.spec.clip_length)
        query = self._load_frames(query_video, frames, class_id)
        support, support_videos = self._draw_supports(class_id, support_videos, videos, rng)
        return self._assemble(query, support, class_id, query_video, support_videos, rng)

    def _test_episode(self, index: int, rng: np.random.Generator) -> dict:
        class_id, query_video = self._test_items[index]
        others = [v for v in self.videos_of_class(class_id) if v != query_video]
        if not others:
            if ("single", class_id) not in self._warned:
                self._warned.add(("single", class_id))
                logger.warning("class %s has a single video (%s): its supports come from the query "
                               "video itself", class_id, query_video)
            others = [query_video]
        else:
            self._warn_if_few(class_id, len(others))
        support_videos = choose_videos(others, self.spec.support_shots, rng)
        frames = self.query_frames_of(query_video, class_id)
        query = self._load_frames(query_video, frames, class_id)
        support, support_videos = self._draw_supports(class_id, support_videos, others, rng)
        item = self._assemble(query, support, class_id, query_video, support_videos, rng)
        item["frame_names"] = [self.frame_name(query_video, f) for f in frames]
        return item

    def _warn_if_few(self, class_id: int, available: int) -> None:
        if available < self.spec.support_shots and ("few", class_id) not in self._warned:
            self._warned.add(("few", class_id))
            logger.warning("class %s has %d video(s) to draw %d supports from: some support videos "
                           "are used twice (with their own random frames)", class_id, available,
                           self.spec.support_shots)

    def _load_frames(self, video: str, frames: Sequence[int], class_id: int):
        images, masks = [], []
        for frame in frames:
            image, mask = self.load_image(video, frame), self.load_mask(video, frame, class_id)
            check_mask_shape(mask, image, f"video {video}, frame {self.frame_name(video, frame)}")
            images.append(image)
            masks.append(mask)
        return images, masks

    def _support_candidates(self, class_id: int, video: str, pool: Sequence[str],
                            rng: np.random.Generator) -> Iterator[tuple[str, int]]:
        """Frames to try for one support: ``video``'s class frames, then the pool's, shuffled."""
        frames = self.support_frames_of(video, class_id)
        for i in rng.permutation(len(frames)):
            yield video, frames[i]
        others = [v for v in pool if v != video]
        for j in rng.permutation(len(others)):
            other_frames = self.support_frames_of(others[j], class_id)
            for i in rng.permutation(len(other_frames)):
                yield others[j], other_frames[i]

    def _draw_supports(self, class_id: int, videos: Sequence[str], pool: Sequence[str],
                       rng: np.random.Generator):
        images, masks, used_videos = [], [], []
        for video in videos:
            first = None
            chosen = None
            for attempt, (cand_video, frame) in enumerate(self._support_candidates(class_id, video, pool, rng)):
                if attempt >= MAX_SUPPORT_TRIES:
                    break
                mask = self.load_mask(cand_video, frame, class_id)
                if first is None:
                    first = (cand_video, frame, mask)
                if mask.any() or not self.spec.skip_empty_supports:
                    chosen = (cand_video, frame, mask)
                    break
            if first is None:
                raise DatasetError(f"class {class_id}: video {video} has no frame with the class")
            if not self.spec.skip_empty_supports and not chosen[2].any() and ("empty", class_id) not in self._warned:
                self._warned.add(("empty", class_id))
                logger.info("class %s: support frame %s of video %s has an empty mask (present but empty "
                            "segmentation); kept, as the authors do (skip_empty_supports=true redraws)",
                            class_id, self.frame_name(first[0], first[1]), first[0])
            if chosen is None:
                chosen = first
                logger.warning("class %s: support frame %s of video %s has an empty mask and no "
                               "non-empty replacement was found in %d tries; using it as is",
                               class_id, self.frame_name(first[0], first[1]), first[0], MAX_SUPPORT_TRIES)
            cand_video, frame, mask = chosen
            image = self.load_image(cand_video, frame)
            check_mask_shape(mask, image, f"video {cand_video}, frame {self.frame_name(cand_video, frame)}")
            images.append(image)
            masks.append(mask)
            used_videos.append(cand_video)
        return (images, masks), used_videos

    def _assemble(self, query, support, class_id: int, video: str, support_videos: list[str],
                  rng: np.random.Generator) -> dict:
        query_img, query_mask = self.transform(*query, rng=rng)
        support_img, support_mask = self.transform(*support, rng=rng)
        return {
            "query_img": query_img,
            "query_mask": query_mask,
            "support_img": support_img,
            "support_mask": support_mask,
            "class_id": int(class_id),
            "video": str(video),
            "support_videos": list(support_videos),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, group={self.group}, "
                f"classes={len(self.classes)}, items={len(self)}, seed={self.seed}, epoch={self.epoch})")


def check_mask_shape(mask: np.ndarray, image: np.ndarray, where: str) -> None:
    """Raise DatasetError when a mask does not match its frame's size."""
    if mask.shape[:2] != image.shape[:2]:
        raise DatasetError(f"{where}: mask size {mask.shape[0]}x{mask.shape[1]} differs from the "
                           f"frame size {image.shape[0]}x{image.shape[1]}")


__all__ = ["EpisodeDataset", "SPLITS", "GROUPS", "MAX_SUPPORT_TRIES", "check_mask_shape"]
