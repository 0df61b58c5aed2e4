"""Episodic data pipeline for VIPMT: YouTube-VIS 2019 and MiniVSPW (docs/protocol.md).

    from dataset import build_dataset, DifferentClassBatchSampler
    ds = build_dataset("youtube_vis", root="data/Youtube-VOS", split="train", group=1)
    sampler = DifferentClassBatchSampler(ds, batch_size=4, seed=42)
"""

from __future__ import annotations

import inspect
from typing import Sequence

from config import DEFAULTS

from .base import EpisodeDataset
from .episodes import CLIP_LENGTH, EpisodeKey, item_rng, select_query_clips
from .errors import DatasetError
from .minivspw import MiniVSPWDataset
from .sampler import DifferentClassBatchSampler
from .transforms import TestTransform, TrainTransform
from .youtube_vis import YouTubeVISDataset, fold_classes

DATASETS = {"youtube_vis": YouTubeVISDataset, "minivspw": MiniVSPWDataset}


def build_dataset(name: str = DEFAULTS.dataset, root: str | None = None, split: str = "train",
                  group: int = DEFAULTS.group, image_size: Sequence[int] = tuple(DEFAULTS.image_size),
                  query_frames: int = DEFAULTS.query_frames, support_shots: int = DEFAULTS.support_shots,
                  episodes_per_class: int = DEFAULTS.episodes_per_class, seed: int = DEFAULTS.seed,
                  augment: bool | None = None, letterbox_per_frame: bool = False, fast_augment: bool = False,
                  skip_empty_supports: bool = DEFAULTS.skip_empty_supports, **dataset_specific) -> EpisodeDataset:
    """Build a split of a dataset by name (``youtube_vis`` or ``minivspw``).

    ``augment`` defaults to ``split == "train"``; ``root`` defaults to ``data/Youtube-VOS`` or
    ``data/VSPW_480p``. ``letterbox_per_frame=True`` letterboxes every frame with its own size
    instead of its list's first frame's (a deviation from the authors, see
    :mod:`dataset.transforms`); ``fast_augment=True`` augments training episodes with
    :class:`dataset.transforms.FastTrainTransform` (a deviation). ``skip_empty_supports=True`` redraws
    support frames with an empty class mask (a deviation; the authors keep them). Extra keyword
    arguments go to the dataset class (``annotation_file``,
    ``frames_dir`` for YouTube-VIS; ``lists_dir``, ``show_progress`` for MiniVSPW;
    ``clip_length`` for both).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    cls = DATASETS[name]
    kwargs = dict(split=split, group=group, image_size=image_size, query_frames=query_frames,
                  support_shots=support_shots, episodes_per_class=episodes_per_class, seed=seed,
                  augment=augment, letterbox_per_frame=letterbox_per_frame, fast_augment=fast_augment,
                  skip_empty_supports=skip_empty_supports, **dataset_specific)
    if root is not None:
        kwargs["root"] = root
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DatasetError(f"unknown argument(s) {', '.join(unknown)} for the {name} dataset; "
                           f"accepted: {', '.join(p for p in accepted if p != 'self')}")
    return cls(**kwargs)


__all__ = [
    "build_dataset", "DatasetError", "EpisodeDataset", "YouTubeVISDataset", "MiniVSPWDataset",
    "DifferentClassBatchSampler",
    "TrainTransform", "TestTransform", "CLIP_LENGTH", "EpisodeKey", "item_rng", "select_query_clips",
    "fold_classes", "DATASETS",
]
