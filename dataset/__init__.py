"""Episodic data pipeline for VIPMT: YouTube-VIS 2019 and MiniVSPW (docs/protocol.md).

    from dataset import build_dataset, DifferentClassBatchSampler, EpisodeSpec
    ds = build_dataset("youtube_vis", root="data/Youtube-VOS", split="train", group=1,
                       spec=EpisodeSpec(image_size=(240, 424)))
    sampler = DifferentClassBatchSampler(ds, batch_size=4, seed=42)
"""

from __future__ import annotations

from config import DEFAULTS

from .base import EpisodeDataset
from .episodes import CLIP_LENGTH, EpisodeKey, EpisodeSpec, item_rng, select_query_clips
from .errors import DatasetError
from .minivspw import MiniVSPWDataset
from .sampler import DifferentClassBatchSampler
from .transforms import TestTransform, TrainTransform
from .youtube_vis import YouTubeVISDataset, fold_classes

DATASETS = {"youtube_vis": YouTubeVISDataset, "minivspw": MiniVSPWDataset}


def build_dataset(name: str = DEFAULTS.dataset, root: str | None = None, split: str = "train",
                  group: int = DEFAULTS.group, spec: EpisodeSpec = EpisodeSpec(), *,
                  episodes_per_class: int = DEFAULTS.episodes_per_class, seed: int = DEFAULTS.seed,
                  augment: bool | None = None, **options) -> EpisodeDataset:
    """Build a split of a dataset by name (``youtube_vis`` or ``minivspw``).

    ``spec`` says what an episode is (:class:`EpisodeSpec`, e.g. ``EpisodeSpec.from_config(cfg)``);
    ``augment`` defaults to ``split == "train"``; ``root`` defaults to ``data/Youtube-VOS`` or
    ``data/VSPW_480p``. ``options`` are the dataset class's own (its ``OPTIONS``:
    ``annotation_file``, ``frames_dir`` for YouTube-VIS; ``lists_dir``, ``show_progress`` for MiniVSPW).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    cls = DATASETS[name]
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise DatasetError(f"unknown option(s) {', '.join(unknown)} for the {name} dataset; "
                           f"its options: {', '.join(cls.OPTIONS)}")
    if root is not None:
        options["root"] = root
    return cls(split=split, group=group, spec=spec, episodes_per_class=episodes_per_class, seed=seed,
               augment=augment, **options)


__all__ = [
    "build_dataset", "EpisodeSpec", "DatasetError", "EpisodeDataset", "YouTubeVISDataset", "MiniVSPWDataset",
    "DifferentClassBatchSampler",
    "TrainTransform", "TestTransform", "CLIP_LENGTH", "EpisodeKey", "item_rng", "select_query_clips",
    "fold_classes", "DATASETS",
]
