"""Training: a small loop (:class:`Trainer`), where it stands (:class:`TrainerState`) and hooks.

Each training episode is 15 query frames cut into three 5-frame clips and 5 support images
of the same class. Clip 1 is segmented against the supports; clip 2 against the supports plus
the 5 frames of clip 1 with their ground-truth masks; clip 3 against the supports plus 5 frames
drawn at random (sorted) from the 10 earlier frames (``models.episode``). The loss is the sum
over clips. Adam on all trainable parameters; mixed precision (float16 autocast) with a
gradient scaler on CUDA. Under AMP a step whose gradients are inf/nan is skipped by the scaler
(which lowers its scale); skipped steps are counted and logged, and ``amp_max_consecutive_skips``
of them in a row stop the run. In float32 a non-finite loss stops the run before it reaches the
weights.

The loop only steps: it calls its hooks before and after each step and epoch, and they do the
rest, in list order:

* :class:`ValidationHook` - after every ``validate_every`` epochs (and the last) the fold's
  held-out classes are validated with the same three-clip scheme in eval mode; the metric is
  the mean class IoU, which sets the best epoch;
* :class:`LoggingHook` - tqdm bar, ``train.log`` lines (through ``logging``), TensorBoard scalars;
* :class:`CheckpointHook` - ``last.pth`` after every epoch, every ``checkpoint_every_iters``
  iterations and when ``--stop-after`` stops the run; ``best.pth`` (complete) and every
  ``save_every`` epochs ``epoch_NNN.pth`` (weights only unless ``periodic_checkpoint_full``);
* :class:`MetricsFileHook` - ``metrics.jsonl``, one JSON line per finished epoch.

SIGINT / SIGTERM (Ctrl-C, a cluster's preemption) during :meth:`Trainer.fit` finish the current
step, write ``last.pth`` and end the run with status 130 ("interrupted at epoch e, iteration
i" in train.log); ``--resume`` continues bit-identically. A second signal exits at once, without
saving (the previous ``last.pth`` is intact: writes are atomic).

Everything a resume needs besides the model, optimizer and scaler is in :class:`TrainerState`
(``state_dict`` / ``load_state_dict``); its keys are top-level keys of the checkpoint file.
:func:`run_training` is the whole of ``train.py``: config, run directory, DDP, logging, fit.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import OPTIMIZER_KEYS, dataset_root, resume_changes, save_config, update_config
from utils import distributed as du
from utils.checkpoint import (CheckpointError, capture_rng_state, is_resumable, load_checkpoint, load_model_state,
                              restore_rng_state, save_checkpoint, save_weights)
from utils.fileio import atomic_copy, atomic_write_text, unwritable_reason
from utils.log import setup_logging
from utils.metrics import FewShotEvaluator
from utils.runlock import LOCK_FILE, RunLock
from utils.runtime import (EXIT_FAILURE, EXIT_INTERRUPTED, RANK_SEED_STRIDE, UserError, resolve_device,
                           seed_everything)

from .build import (BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, LOG_FILE, METRICS_FILE, TENSORBOARD_DIR,
                    backbone_weights_path, build_model, build_split, collate_episodes, dataset_missing_message,
                    run_directory)
from .cli import resolve_config
from .loading import CHECKPOINT_HINT

__all__ = ["TrainingError", "TrainerState", "Trainer", "HookBase", "ValidationHook", "LoggingHook", "CheckpointHook",
           "MetricsFileHook", "default_hooks", "find_resume_checkpoint", "run_training"]

logger = logging.getLogger("train")

LOSS_NAMES = ("main", "aux", "contrast", "score")
VAL_MEMORY_SEED_OFFSET = 7919        # validation memory draws use their own fixed generator
AMP_DTYPE = torch.float16            # as the authors' CUDA AMP; torch >= 2.3 also autocasts CPU ops to it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


# ================================================================ state
@dataclass
class TrainerState:
    """Where a run stands: counters, best metric, history, running means and random streams.

    ``epoch`` counts completed epochs and ``iteration`` the steps done inside the current one
    (0 at an epoch boundary), so (epoch, iteration) is where the run continues.
    """
    epoch: int = 0
    iteration: int = 0
    global_step: int = 0                        # optimizer steps over the whole run
    best_metric: Optional[float] = None         # best validation mean class IoU so far
    best_epoch: Optional[int] = None
    history: List[Dict[str, Any]] = field(default_factory=list)     # one record per finished epoch
    running: Dict[str, float] = field(default_factory=dict)         # running means of this epoch's losses
    # Memory frames of clips 2-3 are drawn from this generator (its state is part of the RNG state).
    memory_generator: torch.Generator = field(default_factory=torch.Generator)
    resume_rng: Optional[Dict[str, Any]] = None  # this rank's streams to restore when a mid-epoch resume starts
    # One record per resume that changed config values: where it happened and {key: [old, new]}.
    config_changes: List[Dict[str, Any]] = field(default_factory=list)
    amp_skipped_steps: int = 0                  # steps the gradient scaler skipped (inf/nan gradients), whole run
    amp_consecutive_skips: int = 0              # ... in a row, up to the last step
    epoch_skipped_steps: int = 0                # ... in this epoch (left out of its running means)

    def record_step(self, losses: Mapping[str, float], *, skipped: bool = False) -> None:
        """Count one step and fold its losses into the epoch's running means.

        ``skipped``: AMP's gradient scaler skipped the update (inf/nan gradients); the step
        counts, its (non-finite) losses do not enter the means.
        """
        self.iteration += 1
        self.global_step += 1
        if skipped:
            self.amp_skipped_steps += 1
            self.amp_consecutive_skips += 1
            self.epoch_skipped_steps += 1
            return
        self.amp_consecutive_skips = 0
        averaged = self.iteration - self.epoch_skipped_steps
        for name, value in losses.items():
            self.running[name] = self.running.get(name, 0.0) + (value - self.running.get(name, 0.0)) / averaged

    def finish_epoch(self) -> Dict[str, Any]:
        """Close the current epoch; returns its history record (hooks may add to it)."""
        self.epoch += 1
        self.iteration = 0
        record: Dict[str, Any] = {"epoch": self.epoch, **{f"train_{k}": v for k, v in self.running.items()}}
        if self.epoch_skipped_steps:
            record["amp_skipped_steps"] = self.epoch_skipped_steps
        self.epoch_skipped_steps = 0
        self.history.append(record)
        return record

    def record_config_change(self, changes: Mapping[str, Any]) -> None:
        """Note a resume's changed config values ``{key: (old, new)}`` at the current position."""
        self.config_changes.append({"epoch": self.epoch, "iteration": self.iteration, "global_step": self.global_step,
                                    "changes": {k: [old, new] for k, (old, new) in changes.items()}})

    def rng_state(self) -> Dict[str, Any]:
        """This process's random streams: python, numpy, torch (+CUDA) and the memory generator."""
        state = capture_rng_state()
        state["memory_generator"] = self.memory_generator.get_state()
        return state

    def state_dict(self) -> Dict[str, Any]:
        """Plain checkpoint fields; ``rng`` holds this process's streams only (one-element list)."""
        return {"epoch": self.epoch, "iteration": self.iteration, "global_step": self.global_step,
                "best_metric": None if self.best_metric is None else float(self.best_metric),
                "best_epoch": self.best_epoch,
                "metrics": {"history": list(self.history), "config_changes": list(self.config_changes)},
                "epoch_running": dict(self.running), "rng": [self.rng_state()],
                "amp_skipped_steps": self.amp_skipped_steps, "amp_consecutive_skips": self.amp_consecutive_skips,
                "epoch_skipped_steps": self.epoch_skipped_steps}

    def load_state_dict(self, state: Mapping[str, Any], *, rank: int = 0, world_size: int = 1) -> None:
        """Continue from a checkpoint's fields (older files may lack the per-iteration keys).

        Inside an epoch, the random streams of rank ``rank`` are restored when the epoch
        continues; with another number of processes than when it was saved, that epoch
        restarts from its first iteration instead.
        """
        self.epoch = int(state["epoch"])
        self.iteration = int(state.get("iteration", 0))
        self.global_step = int(state.get("global_step", 0))
        self.best_metric = state.get("best_metric")
        self.best_epoch = state.get("best_epoch")
        metrics = state.get("metrics") or {}
        self.history = list(metrics.get("history", []))
        self.config_changes = list(metrics.get("config_changes", []))
        self.amp_skipped_steps = int(state.get("amp_skipped_steps", 0))
        self.amp_consecutive_skips = int(state.get("amp_consecutive_skips", 0))
        self.epoch_skipped_steps = int(state.get("epoch_skipped_steps", 0)) if self.iteration > 0 else 0
        self.running, self.resume_rng = {}, None
        saved_world = int(state.get("world_size", 1))
        rng_states = state.get("rng") or []
        if self.iteration > 0 and (saved_world != world_size or len(rng_states) != saved_world):
            logger.warning("the checkpoint was taken inside epoch %d with %d process(es), now %d: that "
                           "epoch restarts from its first iteration", self.epoch + 1, saved_world, world_size)
            self.global_step -= self.iteration
            self.amp_skipped_steps -= self.epoch_skipped_steps
            self.iteration, self.epoch_skipped_steps, self.amp_consecutive_skips = 0, 0, 0
        elif self.iteration > 0:
            self.resume_rng = rng_states[rank]
            self.running = dict(state.get("epoch_running") or {})

    def start_epoch(self, seed: int) -> None:
        """Seed every stream for a fresh epoch, or restore the saved ones when resuming inside it."""
        if self.iteration == 0:
            seed_everything(seed)                              # re-seeded with seed + epoch (+ rank stride)
            self.memory_generator.manual_seed(seed)
            self.running = {}
            self.epoch_skipped_steps = 0
        elif self.resume_rng is not None:                      # mid-epoch resume: continue the streams
            restore_rng_state(self.resume_rng)
            self.memory_generator.set_state(self.resume_rng["memory_generator"])
            self.resume_rng = None


# ================================================================ hooks
class HookBase:
    """Called by :meth:`Trainer.fit` around steps and epochs; override what you need."""

    def before_train(self, trainer: "Trainer") -> None:
        pass

    def before_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer", losses: Dict[str, float]) -> None:
        pass

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        """Always called, also when the run stops early or fails."""


class ValidationHook(HookBase):
    """Validates after every ``validate_every`` epochs and the last; tracks the best epoch."""

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        state, cfg = trainer.state, trainer.cfg
        if state.epoch % cfg.validate_every != 0 and state.epoch != cfg.epochs:
            return
        val = trainer.validate()
        metric = val["mean_class_iou"]
        record["val_mean_class_iou"] = metric
        record["val_class_iou"] = {str(k): v for k, v in val["class_iou"].items()}
        if math.isfinite(metric) and (state.best_metric is None or metric > state.best_metric):
            state.best_metric, state.best_epoch = metric, state.epoch


class LoggingHook(HookBase):
    """Progress bar, train.log lines and TensorBoard scalars (bar and scalars on rank 0 only)."""

    def __init__(self):
        self.writer = None
        self.bar: Optional[tqdm] = None
        self.started = 0.0

    def before_train(self, trainer: "Trainer") -> None:
        if trainer.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter  # noqa: WPS433 - heavy, only when training

            self.writer = SummaryWriter(os.path.join(trainer.run_dir, TENSORBOARD_DIR),
                                        purge_step=trainer.state.global_step)

    def before_epoch(self, trainer: "Trainer") -> None:
        self.started = time.time()
        self.bar = tqdm(total=trainer.sampler.batches_per_epoch(), initial=trainer.state.iteration,
                        desc=f"epoch {trainer.state.epoch + 1}/{trainer.cfg.epochs}",
                        disable=not trainer.dist.is_main, dynamic_ncols=True)

    def after_step(self, trainer: "Trainer", losses: Dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in trainer.state.running.items()})
        step = trainer.state.global_step
        if self.writer is not None and step % trainer.cfg.log_every == 0:
            for k, v in losses.items():
                self.writer.add_scalar(f"train/{k}", v, step)

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        self._close_bar()
        state, epochs = trainer.state, trainer.cfg.epochs
        skipped = record.get("amp_skipped_steps")
        logger.info("epoch %d/%d: %s (%.0f s)%s", state.epoch, epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in state.running.items()), time.time() - self.started,
                    f"; {skipped} step(s) skipped by the AMP gradient scaler" if skipped else "")
        if "val_mean_class_iou" in record:
            logger.info("validation after epoch %d: mean class IoU %.4f (best %.4f, epoch %s)", state.epoch,
                        record["val_mean_class_iou"],
                        state.best_metric if state.best_metric is not None else float("nan"), state.best_epoch)
        if self.writer is not None:
            if "val_mean_class_iou" in record:
                self.writer.add_scalar("val/mean_class_iou", record["val_mean_class_iou"], state.epoch)
            for k, v in state.running.items():
                self.writer.add_scalar(f"epoch/{k}", v, state.epoch)
            self.writer.flush()

    def after_train(self, trainer: "Trainer") -> None:
        self._close_bar()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CheckpointHook(HookBase):
    """``last.pth`` at epoch ends, every ``checkpoint_every_iters`` iterations and on --stop-after;
    ``best.pth`` when validation improved; ``epoch_NNN.pth`` every ``save_every`` epochs.

    ``last.pth`` and ``best.pth`` hold the complete training state. The periodic files hold the
    weights, config and epoch only, as the authors' epoch files (528 MB instead of 1395 MB at
    240x424: no Adam moments), unless ``periodic_checkpoint_full`` makes them complete too.
    """

    def after_step(self, trainer: "Trainer", losses: Dict[str, float]) -> None:
        done, every = trainer.state.iteration, trainer.cfg.checkpoint_every_iters
        inside_epoch = done < trainer.sampler.batches_per_epoch()      # the epoch's end saves anyway
        if inside_epoch and (trainer.stop_requested() or (every and done % every == 0)):
            trainer.save(LAST_CHECKPOINT)

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        state = trainer.state
        last = trainer.save(LAST_CHECKPOINT)
        if trainer.dist.is_main:             # best (and full periodic): the same file, hard-linked when possible
            if state.best_epoch == state.epoch:
                atomic_copy(last, os.path.join(trainer.run_dir, BEST_CHECKPOINT))
            if state.epoch % trainer.cfg.save_every == 0:
                periodic = os.path.join(trainer.run_dir, f"epoch_{state.epoch:03d}.pth")
                if trainer.cfg.periodic_checkpoint_full:
                    atomic_copy(last, periodic)
                else:
                    save_weights(periodic, model=trainer.model, epoch=state.epoch, config=trainer.cfg,
                                 best_metric=state.best_metric, best_epoch=state.best_epoch,
                                 metrics={"history": state.history})
        du.barrier()


def _json_value(value: Any) -> Any:
    """JSON has no nan/inf: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def metrics_line(record: Mapping[str, Any]) -> str:
    """One epoch's history record as a line of ``metrics.jsonl``."""
    return json.dumps(_json_value(record)) + "\n"


class MetricsFileHook(HookBase):
    """``metrics.jsonl`` in the run directory (rank 0): one JSON line per finished epoch with its mean
    losses (``train_*``), the validation IoU per class (``val_class_iou``) and their mean, the step
    count and the learning rate.

    At the start the file is rewritten from the checkpoint's history, so that after a resume it
    holds each finished epoch once (also when a crash came between a line and its checkpoint);
    then each epoch appends its line and flushes it to disk. Runs after :class:`CheckpointHook`,
    so a line never names an epoch that ``last.pth`` does not hold.
    """

    def before_train(self, trainer: "Trainer") -> None:
        if trainer.dist.is_main:
            atomic_write_text(self.path(trainer), "".join(metrics_line(r) for r in trainer.state.history))

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        if trainer.dist.is_main:
            with open(self.path(trainer), "a", encoding="utf-8") as f:
                f.write(metrics_line(record))
                f.flush()
                os.fsync(f.fileno())

    @staticmethod
    def path(trainer: "Trainer") -> str:
        return os.path.join(trainer.run_dir, METRICS_FILE)


def default_hooks() -> List[HookBase]:
    """Validation first (the others use its result), then logging, checkpoints, the metrics file."""
    return [ValidationHook(), LoggingHook(), CheckpointHook(), MetricsFileHook()]


def _worker_ignores_interrupts(worker_id: int) -> None:
    """DataLoader workers: Ctrl-C reaches the whole process group, but only the main process decides
    (it finishes the step and saves); SIGTERM keeps its default so the loader can still end a worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ================================================================ the trainer
class Trainer:
    """Model, optimizer, scaler and data of one run; :meth:`fit` steps through the epochs.

    Args:
        cfg: the resolved config.
        dist_info: this process's place in the DDP world (``DistInfo()`` for one process).
        device: where the model runs.
        run_dir: the run directory (checkpoints, logs).
        resume_checkpoint: a loaded checkpoint of this project to continue, or None.
        hooks: default :func:`default_hooks`.
    """

    def __init__(self, cfg, *, dist_info: du.DistInfo, device: torch.device, run_dir: str,
                 resume_checkpoint: Optional[Dict[str, Any]] = None, hooks: Optional[List[HookBase]] = None):
        from dataset import DifferentClassBatchSampler  # noqa: WPS433

        self.cfg, self.dist, self.device, self.run_dir = cfg, dist_info, device, run_dir
        self.use_amp = bool(cfg.amp) and (device.type == "cuda" or (device.type == "cpu" and cfg.amp_on_cpu))
        self.stop_after: Optional[int] = None
        self.step_skipped = False                       # the last train_step's update was skipped (AMP)
        self.interrupt_signal: Optional[int] = None     # the SIGINT / SIGTERM that asked the loop to stop
        self._saved_at: Optional[tuple] = None          # (epoch, iteration, global_step) of the last save

        self.train_set = build_split(cfg, "train", episodes_per_class=cfg.episodes_per_class, seed=cfg.seed,
                                     augment=True)
        self.val_set = build_split(cfg, "val", episodes_per_class=cfg.val_episodes_per_class, seed=cfg.seed,
                                   augment=False)
        self.sampler = DifferentClassBatchSampler(self.train_set, batch_size=cfg.batch_size, seed=cfg.seed,
                                                  num_replicas=dist_info.world_size, rank=dist_info.rank)
        if self.sampler.batches_per_epoch() == 0:
            raise UserError(f"the train split gives no batch of batch_size={cfg.batch_size} on each of "
                            f"{dist_info.world_size} process(es); lower batch_size or raise episodes_per_class")
        if cfg.check_data:
            self.check_data()

        weights = None if resume_checkpoint is not None else backbone_weights_path(cfg, required=True)
        seed_everything(cfg.seed)                            # the initial weights depend on the seed only
        self.model = build_model(cfg, backbone_weights=weights).to(device)
        # DDP wraps the network; each clip's forward is followed by its own backward
        # (models.episode.train_episode), so DDP sees matched forward/backward pairs.
        if dist_info.distributed:
            self.train_module: nn.Module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            self.train_module = self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.num_trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)
        self.state = TrainerState()
        if resume_checkpoint is not None:
            self.restore(resume_checkpoint)
        self.hooks = default_hooks() if hooks is None else list(hooks)
        logger.info("train: %s; val: %s; %d trainable parameters; device %s%s; AMP %s",
                    self.train_set, self.val_set, self.num_trainable, device,
                    f" x {dist_info.world_size} processes" if dist_info.distributed else "",
                    f"on ({AMP_DTYPE}, loss scale {self.scaler.get_scale():g})" if self.use_amp else "off")

    def check_data(self) -> None:
        """check_data=true: rank 0 decodes every frame and mask that the train and val splits use;
        every rank raises one DatasetError listing all bad files."""
        from dataset.check import find_bad_files, raise_if_bad  # noqa: WPS433

        bad = None
        if self.dist.is_main:
            started = time.time()
            logger.info("check_data: decoding every frame and mask of the train and val splits ...")
            show = sys.stderr.isatty()
            bad = sorted(set(find_bad_files(self.train_set, show_progress=show)
                             + find_bad_files(self.val_set, show_progress=show)))
            if not bad:
                logger.info("check_data: every frame and mask decodes (%.0f s)", time.time() - started)
        raise_if_bad(du.broadcast_object(bad))

    # -------------------------------------------------------------- checkpoints
    def restore(self, ckpt: Dict[str, Any]) -> None:
        """Model, optimizer, scaler and state from one of our checkpoints."""
        load_model_state(self.model, ckpt["state_dict"], source="resume checkpoint", hint=CHECKPOINT_HINT)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"resume checkpoint: the optimizer state does not fit the model ({exc})") from None
        # A resume may change them (config.OPTIMIZER_KEYS); the loaded state holds the saved values.
        for group in self.optimizer.param_groups:
            group.update(lr=self.cfg.lr, betas=tuple(self.cfg.betas), weight_decay=self.cfg.weight_decay)
        if ckpt.get("scaler") and self.use_amp:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state.load_state_dict(ckpt, rank=self.dist.rank, world_size=self.dist.world_size)
        state = self.state
        logger.info("resumed after epoch %d%s (step %d, best mean class IoU %s)", state.epoch,
                    f" + {state.iteration} iterations" if state.iteration else "", state.global_step,
                    "n/a" if state.best_metric is None else f"{state.best_metric:.4f}")

    def save(self, name: str) -> Optional[str]:
        """Write ``run_dir/name`` atomically: every rank contributes its RNG state, rank 0 writes."""
        fields = self.state.state_dict()
        fields["rng"] = du.all_gather_object(fields["rng"][0])      # every rank's streams, in rank order
        self._saved_at = (self.state.epoch, self.state.iteration, self.state.global_step)
        path = None
        if self.dist.is_main:
            fields["world_size"] = self.dist.world_size
            fields["sampler"] = dict(self.sampler.state_dict(), epoch=self.state.epoch,
                                     start_batch=self.state.iteration)
            path = save_checkpoint(os.path.join(self.run_dir, name), model=self.model, optimizer=self.optimizer,
                                   scaler=self.scaler, config=self.cfg, epoch=fields.pop("epoch"),
                                   metrics=fields.pop("metrics"), extra=fields)   # metrics: made plain there
        du.barrier()
        return path

    # -------------------------------------------------------------- one step
    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPE)
        return contextlib.nullcontext()

    def _check_finite(self, clip_loss: torch.Tensor, clip: int) -> None:
        """Float32: stop every rank together when a loss is NaN/inf (before it reaches the weights)."""
        bad = du.all_reduce_sum(0.0 if bool(torch.isfinite(clip_loss.detach()).all()) else 1.0)
        if bad:
            raise TrainingError(f"non-finite loss ({float(clip_loss.detach()):.4g}) in clip {clip} at epoch "
                                f"{self.state.epoch + 1}, iteration {self.state.iteration + 1}; training stopped "
                                f"before the weights were updated; {self._what_is_kept()}. Try a lower learning "
                                f"rate (--resume --lr ...).")

    def _what_is_kept(self) -> str:
        """For the error that stops a run: the checkpoint a resume would continue from, if any."""
        last = os.path.join(self.run_dir, LAST_CHECKPOINT)
        return (f"the last good checkpoint {last!r} is kept (continue with --resume)" if os.path.exists(last)
                else "no checkpoint had been written yet")

    def train_step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One optimizer step on a batch of episodes; returns the losses averaged over ranks."""
        from models.episode import plan_episode, train_episode  # noqa: WPS433

        cfg = self.cfg
        tensors = [batch[k].to(self.device, non_blocking=True)
                   for k in ("query_img", "query_mask", "support_img", "support_mask")]
        plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, self.state.memory_generator)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        clip_counter = iter(range(1, len(plans) + 1))

        def backward(loss: torch.Tensor) -> None:
            clip = next(clip_counter)
            if not self.use_amp:        # under AMP the scaler finds inf/nan gradients and skips the update
                self._check_finite(loss, clip)
            with torch.autocast(device_type=self.device.type, enabled=False):   # backward outside autocast
                self.scaler.scale(loss).backward()

        with self._autocast():
            results = train_episode(self.train_module, *tensors, plans, backward=backward)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        scale_before = self.scaler.get_scale() if self.use_amp else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # GradScaler skips optimizer.step when a gradient is inf/nan, then multiplies its scale by
        # backoff_factor (< 1); otherwise the scale stays or grows. Under DDP the gradients are
        # all-reduced first, so every rank sees the same skip.
        self.step_skipped = self.use_amp and self.scaler.get_scale() < scale_before
        names = ["loss"] + [f"{n}_loss" for n in LOSS_NAMES]
        values = torch.stack([sum(r[n].float() for r in results) for n in names])
        values = du.all_reduce_mean(values).tolist()
        return {n.replace("_loss", "") if n != "loss" else n: v for n, v in zip(names, values)}

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> Dict[str, Any]:
        """Mean class IoU on the val split: the three-clip scheme in eval mode (GT-mask memory)."""
        from models.episode import plan_episode, predict_episode  # noqa: WPS433

        cfg = self.cfg
        self.model.eval()
        self.val_set.set_epoch(0)                        # the same episodes at every validation
        indices = list(range(self.dist.rank, len(self.val_set), self.dist.world_size))
        batches = [indices[i:i + cfg.val_batch_size] for i in range(0, len(indices), cfg.val_batch_size)]
        loader = DataLoader(self.val_set, batch_sampler=batches, num_workers=cfg.num_workers,
                            collate_fn=collate_episodes, pin_memory=self.device.type == "cuda",
                            worker_init_fn=_worker_ignores_interrupts)
        generator = torch.Generator().manual_seed(cfg.seed + VAL_MEMORY_SEED_OFFSET)
        evaluator = FewShotEvaluator(boundary=False, consistency=False)
        for batch in tqdm(loader, desc="validate", leave=False, disable=not self.dist.is_main, dynamic_ncols=True):
            tensors = [batch[k].to(self.device) for k in ("query_img", "query_mask", "support_img", "support_mask")]
            plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, generator)
            with self._autocast():
                pred, _score = predict_episode(self.model, *tensors, plans)
            gt = tensors[1][:, :, 0]
            for b, class_id in enumerate(batch["class_id"]):
                evaluator.add_video(class_id, pred[b].cpu(), gt[b].cpu())
        merged = FewShotEvaluator(boundary=False, consistency=False)
        for part in du.all_gather_object(evaluator):       # every rank gets every rank's counts
            merged.merge(part)
        return {"class_iou": merged.class_iou(), "mean_class_iou": merged.mean_class_iou()}

    # -------------------------------------------------------------- the loop
    def begin_epoch(self) -> None:
        """Seed (or, resuming inside it, restore) the random streams and position the data."""
        epoch = self.state.epoch
        self.state.start_epoch(self.cfg.seed + epoch + self.dist.rank * RANK_SEED_STRIDE)
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, self.state.iteration)

    def stop_requested(self) -> bool:
        """--stop-after: that many optimizer steps are done."""
        return self.stop_after is not None and self.state.global_step >= self.stop_after

    # -------------------------------------------------------------- skipped steps (AMP)
    def _after_skipped_step(self, losses: Dict[str, float]) -> None:
        """Log a step the gradient scaler skipped; stop after ``amp_max_consecutive_skips`` in a row."""
        state, limit = self.state, self.cfg.amp_max_consecutive_skips
        logger.warning("AMP: inf/nan gradients at epoch %d, iteration %d (loss %.4g): the gradient scaler skipped "
                       "the update and lowered its scale to %g (%d in a row, %d in the run)", state.epoch + 1,
                       state.iteration, losses["loss"], self.scaler.get_scale(), state.amp_consecutive_skips,
                       state.amp_skipped_steps)
        if state.amp_consecutive_skips >= limit:
            raise TrainingError(f"{limit} optimizer steps in a row had inf/nan gradients under AMP (the last at "
                                f"epoch {state.epoch + 1}, iteration {state.iteration}; loss scale now "
                                f"{self.scaler.get_scale():g}); training stopped; {self._what_is_kept()}. Try a "
                                f"lower learning rate (--resume --lr ...), amp=false, or a higher "
                                f"amp_max_consecutive_skips.")

    # -------------------------------------------------------------- interrupts
    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        """First SIGINT/SIGTERM: stop after the current step. Second: exit now, without saving."""
        name = signal.Signals(signum).name
        if self.interrupt_signal is not None:
            os.write(2, f"\n{name} again: exiting at once without saving (last.pth holds the last "
                        f"checkpoint)\n".encode())
            os._exit(EXIT_INTERRUPTED)     # noqa: WPS421 - at once: no cleanup that could hang
        self.interrupt_signal = signum
        if self.dist.is_main:              # written directly: logging is not safe inside a signal handler
            os.write(2, f"\n{name}: stopping after the current step and saving last.pth (again: exit at "
                        f"once, without saving)\n".encode())

    @contextlib.contextmanager
    def _stop_signals_handled(self):
        """Route SIGINT / SIGTERM to :meth:`_on_stop_signal` while the loop runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def interrupted(self) -> bool:
        """A stop signal reached any rank (the ranks agree, so they stop at the same step)."""
        return du.all_reduce_sum(0.0 if self.interrupt_signal is None else 1.0) > 0

    def _stop_interrupted(self) -> str:
        state = self.state
        if self._saved_at != (state.epoch, state.iteration, state.global_step):
            self.save(LAST_CHECKPOINT)
        name = signal.Signals(self.interrupt_signal).name if self.interrupt_signal else "a signal to another rank"
        logger.warning("interrupted at epoch %d, iteration %d/%d (%s, step %d): %s saved; continue with --resume",
                       state.epoch + 1, state.iteration, self.sampler.batches_per_epoch(), name, state.global_step,
                       LAST_CHECKPOINT)
        return "interrupted"

    # -------------------------------------------------------------- the loop
    def fit(self, stop_after: Optional[int] = None) -> str:
        """Train from the current state to ``cfg.epochs``: 'finished', 'stopped' by ``stop_after``
        steps, or 'interrupted' by SIGINT / SIGTERM (after saving last.pth)."""
        cfg, state = self.cfg, self.state
        self.stop_after = stop_after
        for hook in self.hooks:
            hook.before_train(self)
        try:
            with self._stop_signals_handled():
                while state.epoch < cfg.epochs:
                    self.begin_epoch()
                    loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                        collate_fn=collate_episodes, pin_memory=self.device.type == "cuda",
                                        generator=torch.Generator().manual_seed(cfg.seed + state.epoch),
                                        worker_init_fn=_worker_ignores_interrupts)
                    for hook in self.hooks:
                        hook.before_epoch(self)
                    for batch in loader:
                        losses = self.train_step(batch)
                        state.record_step(losses, skipped=self.step_skipped)
                        if self.step_skipped:
                            self._after_skipped_step(losses)
                        for hook in self.hooks:
                            hook.after_step(self, losses)
                        if self.interrupted():
                            return self._stop_interrupted()
                        if self.stop_requested() and state.iteration < self.sampler.batches_per_epoch():
                            logger.info("stopped after %d steps (--stop-after), inside epoch %d at iteration "
                                        "%d/%d; continue with --resume", state.global_step, state.epoch + 1,
                                        state.iteration, self.sampler.batches_per_epoch())
                            return "stopped"
                    record = state.finish_epoch()
                    record.update(global_step=state.global_step, lr=self.optimizer.param_groups[0]["lr"])
                    for hook in self.hooks:
                        hook.after_epoch(self, record)
                    if state.epoch < cfg.epochs and self.interrupted():     # (last.pth was just saved)
                        return self._stop_interrupted()
                    if self.stop_requested() and state.epoch < cfg.epochs:
                        logger.info("stopped after %d steps (--stop-after) at the end of epoch %d; continue "
                                    "with --resume", state.global_step, state.epoch)
                        return "stopped"
                return "finished"
        finally:
            for hook in self.hooks:
                hook.after_train(self)


# ================================================================ a whole run (train.py)
def find_resume_checkpoint(cfg, resume_from: Optional[str]) -> str:
    """The checkpoint to continue: ``resume_from``, or the run directory's last.pth."""
    if not resume_from:
        path = os.path.join(run_directory(cfg), LAST_CHECKPOINT)
        if not os.path.isfile(path):
            raise UserError(f"--resume: nothing to resume, {path!r} does not exist (the run "
                            f"{run_directory(cfg)!r} has not saved a checkpoint yet). Start without "
                            f"--resume, or name the run to continue: --resume-from CHECKPOINT, or "
                            f"--run-name NAME (and --output-dir DIR) of an earlier run.")
        return path
    if not os.path.isfile(resume_from):
        raise UserError(f"--resume-from: checkpoint {resume_from!r} does not exist")
    return resume_from


class RunDirectoryHold:
    """Rank 0's hold on the run directory while train.py runs: the :class:`utils.runlock.RunLock`,
    and the removal of what a start that failed before training left.

    A start that fails before training (a bad weights file, bad data, Ctrl-C while the model
    is built) leaves no run folder behind: when this start created the directory (and maybe
    parents) and it holds nothing but what the start wrote (config.yaml, train.log, .lock), the
    directory and the parents this start created are removed. Once training has begun, ``tb/``
    exists and everything is kept.
    """

    START_FILES = frozenset({CONFIG_FILE, LOG_FILE, LOCK_FILE})

    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(run_dir)
        self.lock = RunLock(self.run_dir)
        self.created: List[str] = []          # directories this start created, deepest first

    def acquire(self) -> "RunDirectoryHold":
        missing, path = [], self.run_dir
        while not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        self.lock.acquire()                   # creates the missing directories; refused if another run holds it
        self.created = missing
        return self

    def discard_failed_start(self) -> None:
        if not self.created or not self.lock.held:
            return
        try:
            names = set(os.listdir(self.run_dir))
        except OSError:
            return
        if not names <= self.START_FILES:
            return
        root = logging.getLogger()
        for handler in list(root.handlers):   # train.log's handler, before its file goes
            if isinstance(handler, logging.FileHandler) and os.path.dirname(handler.baseFilename) == self.run_dir:
                root.removeHandler(handler)
                handler.close()
        for name in sorted(names - {LOCK_FILE}):
            os.unlink(os.path.join(self.run_dir, name))
        # The lock file goes last, while still held: no other start can have entered meanwhile.
        os.unlink(self.lock.path)
        for directory in self.created:
            try:
                os.rmdir(directory)
            except OSError:                   # not empty: another run started there meanwhile
                break

    def release(self) -> None:
        self.lock.release()


def _resolve_resumed_config(values: Mapping[str, Any], ckpt: Mapping[str, Any], run_dir: str):
    """(saved config, config to use, changes) for a resume; ConfigError for run-defining changes.

    The config to use is the checkpoint's, with the command line's values over it; its
    output_dir / run_name name the directory the run continues in (--resume-from may point
    elsewhere than they said).
    """
    saved = resolve_config(ckpt.get("config") or {}, {})
    cfg = resolve_config(saved, values)
    if os.path.abspath(run_directory(cfg)) != os.path.abspath(run_dir):
        cfg = update_config(cfg, {"output_dir": os.path.dirname(run_dir), "run_name": os.path.basename(run_dir)})
    return saved, cfg, resume_changes(saved, cfg)


def _describe_changes(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" + (" (set on the optimizer)" if key in OPTIMIZER_KEYS else "")
                     for key, (old, new) in changes.items())


def run_training(values: Mapping[str, Any], *, resume: bool = False, resume_from: Optional[str] = None,
                 stop_after: Optional[int] = None, command: Sequence[str] = ()) -> int:
    """Train one fold: check the inputs, take the run directory, set up DDP and logging, and fit.

    Every check that needs no model comes first (config, dataset root, backbone file, a
    writable run directory); rank 0 then locks the run directory (a second run on it is
    refused, naming the holder) before the process group starts. ``values`` are explicit
    config values (vipmt.cli.explicit_values); resuming, they override the checkpoint's saved
    config, except the run-defining keys (config.RUN_DEFINING_KEYS), which must not change.
    Returns the exit status: 0, 1 when training failed, 130 when interrupted (last.pth saved).
    """
    cfg = resolve_config({}, values)
    resuming = bool(resume or resume_from)
    if resuming:
        checkpoint_path = find_resume_checkpoint(cfg, resume_from)
        run_dir = os.path.dirname(os.path.abspath(checkpoint_path))
    else:
        checkpoint_path, run_dir = None, run_directory(cfg)
        backbone_weights_path(cfg, required=True, warn=False)
        if not os.path.exists(dataset_root(cfg)):
            raise UserError(dataset_missing_message(cfg))
    problem = unwritable_reason(run_dir)
    if problem:
        raise UserError(f"cannot write the run directory {run_dir!r}: {problem}. Choose another --output-dir "
                        f"(or --run-name)")

    hold = RunDirectoryHold(run_dir).acquire() if du.env_rank() == 0 else None
    try:
        return _train_in(run_dir, cfg, values, hold=hold, checkpoint_path=checkpoint_path, stop_after=stop_after,
                         command=command)
    except BaseException:
        if hold is not None:
            hold.discard_failed_start()
        raise
    finally:
        if hold is not None:
            hold.release()


def _train_in(run_dir: str, cfg, values: Mapping[str, Any], *, hold: Optional[RunDirectoryHold],
              checkpoint_path: Optional[str], stop_after: Optional[int], command: Sequence[str]) -> int:
    """The part of :func:`run_training` that runs with the run directory held (by rank 0)."""
    resume_ckpt, changes = None, {}
    if checkpoint_path is not None:
        resume_ckpt = load_checkpoint(checkpoint_path)
        if not is_resumable(resume_ckpt):
            raise UserError(f"--resume: {checkpoint_path!r} is not a resumable training checkpoint of this "
                            f"project (it has no optimizer/epoch state); test it with test.py --checkpoint")
        _saved, cfg, changes = _resolve_resumed_config(values, resume_ckpt, run_dir)
        if not os.path.exists(dataset_root(cfg)):
            raise UserError(dataset_missing_message(cfg))
    elif os.path.exists(os.path.join(run_dir, LAST_CHECKPOINT)):
        raise UserError(f"run directory {run_dir!r} already holds a checkpoint ({LAST_CHECKPOINT}); "
                        f"pass --resume to continue it, or choose another --run-name / --output-dir")
    device_type = resolve_device(cfg.device).type

    dist_info = du.init_distributed(device_type)
    try:
        device = resolve_device(cfg.device, dist_info.local_rank)
        du.barrier()                                   # rank 0 has created the directory
        setup_logging(os.path.join(run_dir, LOG_FILE), rank=dist_info.rank)
        if hold is not None:
            for name in hold.lock.remove_stale_temporaries():
                logger.info("removed %s (a write interrupted by an earlier crash)", name)
            save_config(cfg, os.path.join(run_dir, CONFIG_FILE))
        logger.info("run directory %s; command: %s", run_dir, " ".join(command))
        if changes:
            logger.warning("resuming with changed config values: %s", _describe_changes(changes))
        trainer = Trainer(cfg, dist_info=dist_info, device=device, run_dir=run_dir, resume_checkpoint=resume_ckpt)
        if changes:
            trainer.state.record_config_change(changes)
        try:
            status = trainer.fit(stop_after=stop_after)
        except TrainingError as exc:
            logger.error("%s", exc)
            if dist_info.is_main:
                print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        if status == "interrupted":
            return EXIT_INTERRUPTED
        if status == "finished" and dist_info.is_main:
            best = trainer.state
            logger.info("training finished: best mean class IoU %s at epoch %s; checkpoints in %s",
                        "n/a" if best.best_metric is None else f"{best.best_metric:.4f}", best.best_epoch, run_dir)
        return 0
    finally:
        du.cleanup_distributed()
