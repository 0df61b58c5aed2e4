"""Datasets, model, optimizer and run directory from a resolved config (the builders every script shares).

A training run's pieces are built here, and put together (with the hooks) by
:func:`vipmt.run.run_training` into a :class:`vipmt.training.Trainer`:
:func:`build_training_data` (the train and val splits, the batch sampler and their loaders) and
:func:`build_training_parts` (the model, its DDP wrapper, Adam, the gradient scaler and the
training episode; :func:`training_parts_for` the same around a given model).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from config import AUTO, dataset_root
from utils import distributed as du
from utils.runtime import UserError, seed_everything

from .signals import ignore_stop_signals   # the workers leave Ctrl-C, SIGTERM, SIGUSR1, SIGHUP to the main process

__all__ = ["LAST_CHECKPOINT", "BEST_CHECKPOINT", "CONFIG_FILE", "LOG_FILE", "TENSORBOARD_DIR", "METRICS_FILE",
           "SYNTHETIC_COMMANDS", "run_directory", "dataset_missing_message", "require_dataset",
           "build_split", "backbone_weights_path", "build_model", "collate_episodes", "TrainingData",
           "build_training_data", "TrainingParts", "AMP_DTYPE", "amp_enabled", "amp_autocast", "build_training_parts",
           "training_parts_for",
           "available_cpus", "resolve_num_workers", "EpochTaggedBatches", "build_train_loader"]

logger = logging.getLogger(__name__)

# The files of a run directory <output_dir>/<run_name>.
LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tb"
METRICS_FILE = "metrics.jsonl"     # one JSON line per finished epoch: mean losses, validation IoU per class
AMP_DTYPE = torch.float16          # as the authors' CUDA AMP; torch >= 2.3 also autocasts CPU ops to it

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


def require_dataset(cfg) -> str:
    """The configured dataset's root; UserError saying how to get it when it does not exist."""
    root = dataset_root(cfg)
    if not os.path.exists(root):
        raise UserError(dataset_missing_message(cfg))
    return root


def build_split(cfg, split: str, *, episodes_per_class: int, seed: int, augment: bool):
    """The dataset of one split (train / val / test) of the configured dataset and fold; its episodes
    as the config says (:meth:`dataset.EpisodeSpec.from_config`)."""
    from dataset import EpisodeSpec, build_dataset  # noqa: WPS433 - heavy import kept out of --help

    root = require_dataset(cfg)
    return build_dataset(cfg.dataset, root=root, split=split, group=cfg.group, spec=EpisodeSpec.from_config(cfg),
                         episodes_per_class=episodes_per_class, seed=seed, augment=augment)


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


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a cluster job's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(value: Any, local_world_size: Optional[int] = None) -> int:
    """``num_workers``: an integer as given, or ``auto``: the CPUs this process may use divided among
    the processes of this machine (torchrun's LOCAL_WORLD_SIZE), at least 1."""
    if value != AUTO:
        return int(value)
    ranks = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, available_cpus() // max(1, ranks))


class EpochTaggedBatches:
    """A batch sampler's index lists as ``(epoch, index)`` pairs, the epoch being the dataset's now.

    Persistent DataLoader workers keep the copy of the dataset they started with, so its
    ``set_epoch`` in the main process never reaches them; the epoch travels with each index
    instead (``EpisodeDataset.__getitem__`` takes the pair), and episodes stay a pure function
    of (seed, epoch, index) across workers, epochs and resumes.
    """

    def __init__(self, batch_sampler, dataset):
        self.batch_sampler, self.dataset = batch_sampler, dataset

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch = self.dataset.epoch
        for batch in self.batch_sampler:
            # a replaced index arrives as a dataset.EpisodeKey (a tuple), kept as is
            yield [(epoch, index if isinstance(index, tuple) else int(index)) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


def build_train_loader(cfg, dataset, batch_sampler, *, device: torch.device, local_world_size: Optional[int] = None,
                       worker_init_fn: Optional[Callable[[int], None]] = ignore_stop_signals) -> DataLoader:
    """The training DataLoader, built once per run: ``num_workers`` (``auto`` resolved) persistent
    workers, pinned memory on CUDA (the step copies with ``non_blocking=True``), batches of
    :func:`collate_episodes`. Iterate it once per epoch after ``dataset.set_epoch`` and
    ``batch_sampler.set_epoch``."""
    workers = resolve_num_workers(cfg.num_workers, local_world_size)
    return DataLoader(dataset, batch_sampler=EpochTaggedBatches(batch_sampler, dataset), num_workers=workers,
                      collate_fn=collate_episodes, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, worker_init_fn=worker_init_fn,
                      # worker seeds only: episodes draw from their own generators (dataset.episodes)
                      generator=torch.Generator().manual_seed(int(cfg.seed)))


@dataclass
class TrainingData:
    """The train and val splits of a run, the train split's batch sampler, and their loaders."""
    train_set: Any
    val_set: Any
    sampler: Any                 # dataset.DifferentClassBatchSampler of this rank
    cfg: Any
    pin_memory: bool = False
    _train_loader: Optional[DataLoader] = None

    def train_loader(self, epoch: int) -> DataLoader:
        """The training loader (:func:`build_train_loader`, made on the first call and kept: its
        workers persist); it serves the epoch the train split and the sampler are set to
        (``set_epoch``), which ``epoch`` names."""
        if self._train_loader is None:
            self._train_loader = build_train_loader(self.cfg, self.train_set, self.sampler,
                                                    device=torch.device("cuda" if self.pin_memory else "cpu"))
        return self._train_loader

    def val_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """This rank's share of the val episodes (every ``world_size``-th), in ``val_batch_size`` batches."""
        indices = list(range(rank, len(self.val_set), world_size))
        size = self.cfg.val_batch_size
        batches = [indices[i:i + size] for i in range(0, len(indices), size)]
        return DataLoader(self.val_set, batch_sampler=batches, num_workers=resolve_num_workers(self.cfg.num_workers),
                          collate_fn=collate_episodes, pin_memory=self.pin_memory,
                          worker_init_fn=ignore_stop_signals)

    def check_files(self, dist_info: du.DistInfo) -> None:
        """check_data=true: rank 0 decodes every frame and mask that the train and val splits use;
        every rank raises one DatasetError listing all bad files."""
        from dataset.check import find_bad_files, raise_if_bad  # noqa: WPS433

        bad = None
        if dist_info.is_main:
            started = time.time()
            logger.info("check_data: decoding every frame and mask of the train and val splits ...")
            show = sys.stderr.isatty()
            bad = sorted(set(find_bad_files(self.train_set, show_progress=show)
                             + find_bad_files(self.val_set, show_progress=show)))
            if not bad:
                logger.info("check_data: every frame and mask decodes (%.0f s)", time.time() - started)
        raise_if_bad(du.broadcast_object(bad))


def build_training_data(cfg, dist_info: du.DistInfo, device: torch.device) -> TrainingData:
    """The train split (augmented) and val split of the fold, and this rank's batch sampler;
    with ``check_data`` every file they use is decoded first."""
    from dataset import DifferentClassBatchSampler  # noqa: WPS433

    train_set = build_split(cfg, "train", episodes_per_class=cfg.episodes_per_class, seed=cfg.seed, augment=True)
    val_set = build_split(cfg, "val", episodes_per_class=cfg.val_episodes_per_class, seed=cfg.seed, augment=False)
    sampler = DifferentClassBatchSampler(train_set, batch_size=cfg.batch_size, seed=cfg.seed,
                                         num_replicas=dist_info.world_size, rank=dist_info.rank,
                                         balanced=cfg.balanced_class_sampler)
    if sampler.batches_per_epoch() == 0:
        raise UserError(f"the train split gives no batch of batch_size={cfg.batch_size} on each of "
                        f"{dist_info.world_size} process(es); lower batch_size or raise episodes_per_class")
    data = TrainingData(train_set, val_set, sampler, cfg, pin_memory=device.type == "cuda")
    if cfg.check_data:
        data.check_files(dist_info)
    return data


@dataclass
class TrainingParts:
    """What a training step uses and changes: the model, the module that trains it (DDP or the
    model), Adam, the gradient scaler (``scaler.is_enabled()``: AMP is on) and the training
    episode, called as ``episode(train_module, query_img, query_mask, support_img, support_mask,
    plans, backward=...)`` -> one dict of detached loss terms per clip
    (:func:`models.episode.train_episode`, the one train.py runs)."""
    model: nn.Module
    train_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    episode: Callable[..., List[Dict[str, torch.Tensor]]]


def amp_enabled(cfg, device: torch.device) -> bool:
    """Mixed precision: ``amp`` on CUDA, and on CPU only with ``amp_on_cpu`` (a testing aid)."""
    return bool(cfg.amp) and (device.type == "cuda" or (device.type == "cpu" and cfg.amp_on_cpu))


def amp_autocast(device: torch.device, enabled: bool):
    """The training's autocast context: :data:`AMP_DTYPE` when AMP is on, else nothing."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=AMP_DTYPE)
    return contextlib.nullcontext()


def build_training_parts(cfg, dist_info: du.DistInfo, device: torch.device, *,
                         backbone_weights: Optional[str]) -> TrainingParts:
    """A VIPMT on ``device`` (initial weights from ``cfg.seed``; the backbone from the file or random)
    and its :func:`training_parts_for`."""
    seed_everything(cfg.seed)                            # the initial weights depend on the seed only
    model = build_model(cfg, backbone_weights=backbone_weights).to(device)
    return training_parts_for(model, cfg, dist_info, device)


def training_parts_for(model: nn.Module, cfg, dist_info: du.DistInfo, device: torch.device) -> TrainingParts:
    """``model`` (already on ``device``) wrapped in DDP when the world has several processes, Adam on
    its trainable parameters with the config's settings, the gradient scaler (AMP as
    :func:`amp_enabled`) and train.py's episode (:func:`models.episode.train_episode`)."""
    from models.episode import train_episode  # noqa: WPS433 - heavy import kept out of --help

    # DDP wraps the network; each clip's forward is followed by its own backward
    # (models.episode.train_episode), so DDP sees matched forward/backward pairs.
    train_module: nn.Module = model
    if dist_info.distributed:
        train_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_enabled(cfg, device))
    return TrainingParts(model, train_module, optimizer, scaler, train_episode)
