"""Training: a small loop (:class:`Trainer`), where it stands (:class:`TrainerState`) and hooks.

Each training episode is 15 query frames cut into three 5-frame clips and 5 support images
of the same class. Clip 1 is segmented against the supports; clip 2 against the supports plus
the 5 frames of clip 1 with their ground-truth masks; clip 3 against the supports plus 5 frames
drawn at random (sorted) from the 10 earlier frames (``models.episode``). The loss is the sum
over clips. Adam on all trainable parameters; mixed precision with a gradient scaler on CUDA.

The loop only steps: it calls its hooks before and after each step and epoch, and they do the
rest, in list order:

* :class:`ValidationHook` - after every ``validate_every`` epochs (and the last) the fold's
  held-out classes are validated with the same three-clip scheme in eval mode; the metric is
  the mean class IoU, which sets the best epoch;
* :class:`LoggingHook` - tqdm bar, ``train.log`` lines (through ``logging``), TensorBoard scalars;
* :class:`CheckpointHook` - ``last.pth`` after every epoch, every ``checkpoint_every_iters``
  iterations and when ``--stop-after`` stops the run; ``best.pth`` and ``epoch_NNN.pth``.

Everything a resume needs besides the model, optimizer and scaler is in :class:`TrainerState`
(``state_dict`` / ``load_state_dict``); its keys are top-level keys of the checkpoint file.
:func:`run_training` is the whole of ``train.py``: config, run directory, DDP, logging, fit.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import config_to_dict, dataset_root, save_config
from utils import distributed as du
from utils.checkpoint import (CheckpointError, capture_rng_state, is_our_checkpoint, load_checkpoint,
                              load_model_state, restore_rng_state, save_checkpoint)
from utils.fileio import atomic_copy, remove_stale_temporaries
from utils.log import setup_logging
from utils.metrics import FewShotEvaluator
from utils.runtime import EXIT_FAILURE, RANK_SEED_STRIDE, UserError, resolve_device, seed_everything

from .build import (CONFIG_FILE, LAST_CHECKPOINT, BEST_CHECKPOINT, LOG_FILE, TENSORBOARD_DIR, backbone_weights_path,
                    build_model, build_split, collate_episodes, dataset_missing_message, run_directory)
from .cli import resolve_config
from .loading import CHECKPOINT_HINT

__all__ = ["TrainingError", "TrainerState", "Trainer", "HookBase", "ValidationHook", "LoggingHook", "CheckpointHook",
           "default_hooks", "run_training"]

logger = logging.getLogger("train")

LOSS_NAMES = ("main", "aux", "contrast", "score")
VAL_MEMORY_SEED_OFFSET = 7919        # validation memory draws use their own fixed generator


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

    def record_step(self, losses: Mapping[str, float]) -> None:
        """Count one optimizer step and fold its losses into the epoch's running means."""
        self.iteration += 1
        self.global_step += 1
        for name, value in losses.items():
            self.running[name] = self.running.get(name, 0.0) + (value - self.running.get(name, 0.0)) / self.iteration

    def finish_epoch(self) -> Dict[str, Any]:
        """Close the current epoch; returns its history record (hooks may add to it)."""
        self.epoch += 1
        self.iteration = 0
        record: Dict[str, Any] = {"epoch": self.epoch, **{f"train_{k}": v for k, v in self.running.items()}}
        self.history.append(record)
        return record

    def rng_state(self) -> Dict[str, Any]:
        """This process's random streams: python, numpy, torch (+CUDA) and the memory generator."""
        state = capture_rng_state()
        state["memory_generator"] = self.memory_generator.get_state()
        return state

    def state_dict(self) -> Dict[str, Any]:
        """Plain checkpoint fields; ``rng`` holds this process's streams only (one-element list)."""
        return {"epoch": self.epoch, "iteration": self.iteration, "global_step": self.global_step,
                "best_metric": None if self.best_metric is None else float(self.best_metric),
                "best_epoch": self.best_epoch, "metrics": {"history": list(self.history)},
                "epoch_running": dict(self.running), "rng": [self.rng_state()]}

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
        self.history = list((state.get("metrics") or {}).get("history", []))
        self.running, self.resume_rng = {}, None
        saved_world = int(state.get("world_size", 1))
        rng_states = state.get("rng") or []
        if self.iteration > 0 and (saved_world != world_size or len(rng_states) != saved_world):
            logger.warning("the checkpoint was taken inside epoch %d with %d process(es), now %d: that "
                           "epoch restarts from its first iteration", self.epoch + 1, saved_world, world_size)
            self.global_step -= self.iteration
            self.iteration = 0
        elif self.iteration > 0:
            self.resume_rng = rng_states[rank]
            self.running = dict(state.get("epoch_running") or {})

    def start_epoch(self, seed: int) -> None:
        """Seed every stream for a fresh epoch, or restore the saved ones when resuming inside it."""
        if self.iteration == 0:
            seed_everything(seed)                              # re-seeded with seed + epoch (+ rank stride)
            self.memory_generator.manual_seed(seed)
            self.running = {}
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
        logger.info("epoch %d/%d: %s (%.0f s)", state.epoch, epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in state.running.items()), time.time() - self.started)
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
    ``best.pth`` when validation improved; ``epoch_NNN.pth`` every ``save_every`` epochs."""

    def after_step(self, trainer: "Trainer", losses: Dict[str, float]) -> None:
        done, every = trainer.state.iteration, trainer.cfg.checkpoint_every_iters
        inside_epoch = done < trainer.sampler.batches_per_epoch()      # the epoch's end saves anyway
        if inside_epoch and (trainer.stop_requested() or (every and done % every == 0)):
            trainer.save(LAST_CHECKPOINT)

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        state = trainer.state
        last = trainer.save(LAST_CHECKPOINT)
        if trainer.dist.is_main:             # best / periodic: the same file (hard link when possible)
            if state.best_epoch == state.epoch:
                atomic_copy(last, os.path.join(trainer.run_dir, BEST_CHECKPOINT))
            if state.epoch % trainer.cfg.save_every == 0:
                atomic_copy(last, os.path.join(trainer.run_dir, f"epoch_{state.epoch:03d}.pth"))
        du.barrier()


def default_hooks() -> List[HookBase]:
    """Validation first (logging and checkpoints use its result), then logging, then checkpoints."""
    return [ValidationHook(), LoggingHook(), CheckpointHook()]


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
        self.use_amp = bool(cfg.amp) and device.type == "cuda"
        self.stop_after: Optional[int] = None

        self.train_set = build_split(cfg, "train", episodes_per_class=cfg.episodes_per_class, seed=cfg.seed,
                                     augment=True)
        self.val_set = build_split(cfg, "val", episodes_per_class=cfg.val_episodes_per_class, seed=cfg.seed,
                                   augment=False)
        self.sampler = DifferentClassBatchSampler(self.train_set, batch_size=cfg.batch_size, seed=cfg.seed,
                                                  num_replicas=dist_info.world_size, rank=dist_info.rank)
        if self.sampler.batches_per_epoch() == 0:
            raise UserError(f"the train split gives no batch of batch_size={cfg.batch_size} on each of "
                            f"{dist_info.world_size} process(es); lower batch_size or raise episodes_per_class")

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
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state = TrainerState()
        if resume_checkpoint is not None:
            self.restore(resume_checkpoint)
        self.hooks = default_hooks() if hooks is None else list(hooks)
        logger.info("train: %s; val: %s; %d trainable parameters; device %s%s; AMP %s",
                    self.train_set, self.val_set, self.num_trainable, device,
                    f" x {dist_info.world_size} processes" if dist_info.distributed else "",
                    "on" if self.use_amp else "off")

    # -------------------------------------------------------------- checkpoints
    def restore(self, ckpt: Dict[str, Any]) -> None:
        """Model, optimizer, scaler and state from one of our checkpoints."""
        load_model_state(self.model, ckpt["state_dict"], source="resume checkpoint", hint=CHECKPOINT_HINT)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"resume checkpoint: the optimizer state does not fit the model ({exc})") from None
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
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _check_finite(self, clip_loss: torch.Tensor, clip: int) -> None:
        """Stop every rank together when a loss is NaN/inf (before it reaches the weights)."""
        bad = du.all_reduce_sum(0.0 if bool(torch.isfinite(clip_loss.detach()).all()) else 1.0)
        if bad:
            last = os.path.join(self.run_dir, LAST_CHECKPOINT)
            keep = (f"the last good checkpoint {last!r} is kept (continue with --resume)"
                    if os.path.exists(last) else "no checkpoint had been written yet")
            raise TrainingError(f"non-finite loss ({float(clip_loss.detach()):.4g}) in clip {clip} at epoch "
                                f"{self.state.epoch + 1}, iteration {self.state.iteration + 1}; training stopped "
                                f"before the weights were updated; {keep}. Try a lower learning rate (lr=...) "
                                f"or amp=false.")

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
            self._check_finite(loss, next(clip_counter))
            with torch.autocast(device_type=self.device.type, enabled=False):   # backward outside autocast
                self.scaler.scale(loss).backward()

        with self._autocast():
            results = train_episode(self.train_module, *tensors, plans, backward=backward)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
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
                            collate_fn=collate_episodes, pin_memory=self.device.type == "cuda")
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

    def fit(self, stop_after: Optional[int] = None) -> str:
        """Train from the current state to ``cfg.epochs``: 'finished', or 'stopped' by ``stop_after`` steps."""
        cfg, state = self.cfg, self.state
        self.stop_after = stop_after
        for hook in self.hooks:
            hook.before_train(self)
        try:
            while state.epoch < cfg.epochs:
                self.begin_epoch()
                loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                    collate_fn=collate_episodes, pin_memory=self.device.type == "cuda",
                                    generator=torch.Generator().manual_seed(cfg.seed + state.epoch))
                for hook in self.hooks:
                    hook.before_epoch(self)
                for batch in loader:
                    losses = self.train_step(batch)
                    state.record_step(losses)
                    for hook in self.hooks:
                        hook.after_step(self, losses)
                    if self.stop_requested() and state.iteration < self.sampler.batches_per_epoch():
                        logger.info("stopped after %d steps (--stop-after), inside epoch %d at iteration %d/%d; "
                                    "continue with --resume", state.global_step, state.epoch + 1, state.iteration,
                                    self.sampler.batches_per_epoch())
                        return "stopped"
                record = state.finish_epoch()
                for hook in self.hooks:
                    hook.after_epoch(self, record)
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
                            f"--resume, or pass --resume PATH / --run-name NAME of an earlier run.")
        return path
    if not os.path.isfile(resume_from):
        raise UserError(f"--resume-from: checkpoint {resume_from!r} does not exist")
    return resume_from


def run_training(values: Mapping[str, Any], *, resume: bool = False, resume_from: Optional[str] = None,
                 stop_after: Optional[int] = None, command: Sequence[str] = ()) -> int:
    """Train one fold: check the inputs, set up the run directory, DDP and logging, and fit.

    ``values`` are explicit config values (vipmt.cli.explicit_values); resuming, they override
    the checkpoint's saved config. Returns the exit status (0, or 1 when training failed).
    """
    cfg = resolve_config({}, values)
    resume_ckpt = None
    if resume or resume_from:
        path = find_resume_checkpoint(cfg, resume_from)
        resume_ckpt = load_checkpoint(path)
        if not is_our_checkpoint(resume_ckpt) or resume_ckpt.get("optimizer") is None:
            raise UserError(f"--resume: {path!r} is not a resumable training checkpoint of this "
                            f"project (it has no optimizer/epoch state); test it with test.py --checkpoint")
        saved = resume_ckpt.get("config") or {}
        cfg = resolve_config(saved, values)
        changed = {k: (saved.get(k), v) for k, v in config_to_dict(cfg).items() if saved.get(k) != v}
        if changed:
            logger.warning("resuming with changed config values: %s",
                           ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        run_dir = os.path.dirname(os.path.abspath(path))
    else:
        run_dir = run_directory(cfg)

    # Inputs are checked before anything is written.
    if resume_ckpt is None:
        backbone_weights_path(cfg, required=True, warn=False)
        if os.path.exists(os.path.join(run_dir, LAST_CHECKPOINT)):
            raise UserError(f"run directory {run_dir!r} already holds a checkpoint ({LAST_CHECKPOINT}); "
                            f"pass --resume to continue it, or choose another --run-name / --output-dir")
    if not os.path.exists(dataset_root(cfg)):
        raise UserError(dataset_missing_message(cfg))
    device_type = resolve_device(cfg.device).type

    dist_info = du.init_distributed(device_type)
    try:
        device = resolve_device(cfg.device, dist_info.local_rank)
        if dist_info.is_main:
            os.makedirs(run_dir, exist_ok=True)
        du.barrier()
        setup_logging(os.path.join(run_dir, LOG_FILE), rank=dist_info.rank)
        if dist_info.is_main:
            for name in remove_stale_temporaries(run_dir):
                logger.info("removed %s (a write interrupted by an earlier crash)", name)
            save_config(cfg, os.path.join(run_dir, CONFIG_FILE))
        logger.info("run directory %s; command: %s", run_dir, " ".join(command))
        trainer = Trainer(cfg, dist_info=dist_info, device=device, run_dir=run_dir, resume_checkpoint=resume_ckpt)
        try:
            status = trainer.fit(stop_after=stop_after)
        except TrainingError as exc:
            logger.error("%s", exc)
            if dist_info.is_main:
                print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        if status == "finished" and dist_info.is_main:
            best = trainer.state
            logger.info("training finished: best mean class IoU %s at epoch %s; checkpoints in %s",
                        "n/a" if best.best_metric is None else f"{best.best_metric:.4f}", best.best_epoch, run_dir)
        return 0
    finally:
        du.cleanup_distributed()
