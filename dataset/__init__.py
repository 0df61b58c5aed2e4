"""Episodic data pipeline for VIPMT: YouTube-VIS 2019 and MiniVSPW (docs/protocol.md).

    from dataset import build_dataset, DifferentClassBatchSampler
    ds = build_dataset("youtube_vis", root="data/Youtube-VOS", split="train", group=1)
    sampler = DifferentClassBatchSampler(ds, batch_size=4, seed=42)
"""

from __future__ import annotations

import inspect
from typing import Sequence

from .base import EpisodeDataset
from .episodes import CLIP_LENGTH, item_rng, select_query_clips
from .errors import DatasetError
from .minivspw import MiniVSPWDataset
from .sampler import DifferentClassBatchSampler
from .transforms import TestTransform, TrainTransform
from .youtube_vis import YouTubeVISDataset, fold_classes

_LAZY = {"write_synthetic_youtube_vis", "write_synthetic_vspw"}


def __getattr__(name: str):
    # The writers are imported on first use, so that ``python -m dataset.synthetic`` does not
    # find its own module already imported by the package.
    if name in _LAZY:
        from . import synthetic
        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DATASETS = {"youtube_vis": YouTubeVISDataset, "minivspw": MiniVSPWDataset}


def build_dataset(name: str = "youtube_vis", root: str | None = None, split: str = "train",
                  group: int = 1, image_size: Sequence[int] = (240, 424), query_frames: int = 15,
                  support_shots: int = 5, episodes_per_class: int = 100, seed: int = 42,
                  augment: bool | None = None, **dataset_specific) -> EpisodeDataset:
    """Build a split of a dataset by name (``youtube_vis`` or ``minivspw``).

    ``augment`` defaults to ``split == "train"``; ``root`` defaults to ``data/Youtube-VOS`` or
    ``data/VSPW_480p``. Extra keyword arguments go to the dataset class (``annotation_file``,
    ``frames_dir`` for YouTube-VIS; ``lists_dir``, ``show_progress`` for MiniVSPW;
    ``clip_length`` for both).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    cls = DATASETS[name]
    kwargs = dict(split=split, group=group, image_size=image_size, query_frames=query_frames,
                  support_shots=support_shots, episodes_per_class=episodes_per_class, seed=seed,
                  augment=augment, **dataset_specific)
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
    "DifferentClassBatchSampler", "write_synthetic_youtube_vis", "write_synthetic_vspw",
    "TrainTransform", "TestTransform", "CLIP_LENGTH", "item_rng", "select_query_clips",
    "fold_classes", "DATASETS",
]
