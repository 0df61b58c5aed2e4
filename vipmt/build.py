"""Datasets, model and run directory from a resolved config (the builders every script shares)."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import torch

from config import dataset_root
from utils.runtime import UserError

__all__ = ["LAST_CHECKPOINT", "BEST_CHECKPOINT", "CONFIG_FILE", "LOG_FILE", "TENSORBOARD_DIR", "METRICS_FILE",
           "SYNTHETIC_COMMANDS", "run_directory", "dataset_missing_message",
           "build_split", "backbone_weights_path", "build_model", "collate_episodes"]

logger = logging.getLogger(__name__)

# The files of a run directory <output_dir>/<run_name>.
LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tb"
METRICS_FILE = "metrics.jsonl"     # one JSON line per finished epoch: mean losses, validation IoU per class

# dataset -> (what its root holds, the command that writes a synthetic one, the flags to use it)
SYNTHETIC_COMMANDS = {
    "youtube_vis": ("train/train.json and train/JPEGImages/<video>/<frame>.jpg",
                    "python -m synthetic youtube_vis --root data/synthetic_ytvis",
                    "--data-root data/synthetic_ytvis"),
    "minivspw": ("data/<video>/origin, data/<video>/mask and lists/",
                 "python -m synthetic vspw --root data/synthetic_vspw",
                 "--dataset minivspw --data-root data/synthetic_vspw"),
}


def run_directory(cfg) -> str:
    """``<output_dir>/<run_name>``; the run name defaults to ``<dataset>_group<G>``."""
    name = cfg.run_name or f"{cfg.dataset}_group{cfg.group}"
    return os.path.join(cfg.output_dir, name)


def dataset_missing_message(cfg) -> str:
    expected, synthetic, flag = SYNTHETIC_COMMANDS[cfg.dataset]
    return (f"dataset {cfg.dataset!r} not found at {dataset_root(cfg)!r} (expected {expected}). Download it "
            f"(see data/README.md) and pass --data-root PATH, or try the built-in demo on a "
            f"synthetic dataset: `python demo.py`, or write one with `{synthetic}` and "
            f"add `{flag}` to this command.")


def build_split(cfg, split: str, *, episodes_per_class: int, seed: int, augment: bool):
    """The dataset of one split (train / val / test) of the configured dataset and fold."""
    from dataset import build_dataset  # noqa: WPS433 - heavy import kept out of --help

    root = dataset_root(cfg)
    if not os.path.exists(root):
        raise UserError(dataset_missing_message(cfg))
    return build_dataset(name=cfg.dataset, root=root, split=split, group=cfg.group,
                         image_size=tuple(cfg.image_size), query_frames=cfg.query_frames,
                         support_shots=cfg.support_shots, episodes_per_class=episodes_per_class,
                         seed=seed, augment=augment, clip_length=cfg.clip_length,
                         letterbox_per_frame=cfg.letterbox_per_frame)


def backbone_weights_path(cfg, *, required: bool, warn: bool = True) -> Optional[str]:
    """The backbone weight file to build the model with, or None (random backbone).

    ``required=False`` (resuming, or loading a checkpoint that holds the backbone): None.
    A missing file is a UserError that says where to get it.
    """
    value = cfg.backbone_weights
    if value.lower() in ("none", ""):
        if required and warn:
            logger.warning("training from a RANDOM backbone (--backbone-weights none): expect much "
                           "worse results than with the ImageNet weights resnet50_v2.pth")
        return None
    if not required:
        return None
    if not os.path.isfile(value):
        from models.backbone import WEIGHTS_HELP  # noqa: WPS433 - heavy import kept out of --help

        raise UserError(f"backbone weights not found: {value!r}. {WEIGHTS_HELP}")
    return value


def build_model(cfg, *, backbone_weights: Optional[str]):
    """A VIPMT for ``cfg.image_size`` with the configured loss weights (weights from the file or random)."""
    from models import VIPMT  # noqa: WPS433
    from models.losses import LossWeights  # noqa: WPS433

    weights = LossWeights(main=cfg.loss_weight_main, aux=cfg.loss_weight_aux,
                          contrast=cfg.loss_weight_contrast, score=cfg.loss_weight_score)
    return VIPMT(backbone_weights=backbone_weights, image_size=tuple(cfg.image_size), loss_weights=weights)


def collate_episodes(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack the tensors of fixed-length episodes ([B, ...]); other values become lists."""
    out: Dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
