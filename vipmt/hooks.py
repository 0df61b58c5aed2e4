"""What happens around the training steps: validation, logging, checkpoints, the metrics file.

:meth:`vipmt.training.Trainer.fit` calls its hooks before and after each step and epoch, in
list order (:func:`default_hooks`):

* :class:`vipmt.validation.ValidationHook` (given to :func:`default_hooks`) - after every
  ``validate_every`` epochs (and the last) validates; its mean class IoU sets the best epoch;
* :class:`LoggingHook` - tqdm bar, ``train.log`` lines (through ``logging``), TensorBoard scalars;
* :class:`CheckpointHook` - through the :class:`Checkpointer` it was given: ``last.pth`` after
  every epoch, every ``checkpoint_every_iters`` iterations and when the run stops inside an
  epoch (``--stop-after``, a stop signal); ``best.pth`` (complete) and every ``save_every`` epochs
  ``epoch_NNN.pth`` (weights only unless ``periodic_checkpoint_full``);
* :class:`MetricsFileHook` - ``metrics.jsonl``, one JSON line per finished epoch.

:class:`Checkpointer` is the one owner of our checkpoint files' training contents: what a
resume needs is written by :meth:`Checkpointer.save` and read back by :meth:`Checkpointer.restore`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from tqdm import tqdm

from utils import distributed as du
from utils.checkpoint import CheckpointError, load_model_state, save_checkpoint, save_weights
from utils.fileio import atomic_copy, atomic_write_text, write_error
from utils.plain import plain_data

from .build import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE, TENSORBOARD_DIR
from .loading import CHECKPOINT_HINT

if TYPE_CHECKING:                      # annotations only: training.py imports this module
    from .training import Trainer

__all__ = ["HookBase", "LoggingHook", "Checkpointer", "CheckpointHook", "MetricsFileHook",
           "default_hooks", "metrics_line"]

logger = logging.getLogger("train")


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


class LoggingHook(HookBase):
    """Progress bar, train.log lines and TensorBoard scalars in ``run_dir`` (bar and scalars on rank 0 only)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.writer = None
        self.bar: Optional[tqdm] = None
        self.started = 0.0

    def before_train(self, trainer: "Trainer") -> None:
        if trainer.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter  # noqa: WPS433 - heavy, only when training

            self.writer = SummaryWriter(os.path.join(self.run_dir, TENSORBOARD_DIR),
                                        purge_step=trainer.state.global_step)

    def before_epoch(self, trainer: "Trainer") -> None:
        self.started = time.time()
        self.bar = tqdm(total=trainer.batches_per_epoch(), initial=trainer.state.iteration,
                        desc=f"epoch {trainer.state.epoch + 1}/{trainer.cfg.epochs}",
                        disable=not trainer.dist.is_main, dynamic_ncols=True)

    def after_step(self, trainer: "Trainer", losses: Dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix({**{k: f"{v:.3f}" for k, v in trainer.state.running.items()},
                              "data": f"{trainer.data_wait.last:.3f}s"})
        step = trainer.state.global_step
        if self.writer is not None and step % trainer.cfg.log_every == 0:
            for k, v in losses.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/data_time", trainer.data_wait.last, step)

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        self._close_bar()
        state, epochs = trainer.state, trainer.cfg.epochs
        skipped = record.get("amp_skipped_steps")
        waiting = (f", data {record['data_time']:.3f} s/step ({100 * record['data_wait_fraction']:.0f} % waiting)"
                   if "data_time" in record else "")
        logger.info("epoch %d/%d: %s (%.0f s%s)%s", state.epoch, epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in state.running.items()), time.time() - self.started,
                    waiting, f"; {skipped} step(s) skipped by the AMP gradient scaler" if skipped else "")
        if "val_mean_class_iou" in record:
            logger.info("validation after epoch %d: mean class IoU %.4f (best %.4f, epoch %s)", state.epoch,
                        record["val_mean_class_iou"],
                        state.best_metric if state.best_metric is not None else float("nan"), state.best_epoch)
        if self.writer is not None:
            if "val_mean_class_iou" in record:
                self.writer.add_scalar("val/mean_class_iou", record["val_mean_class_iou"], state.epoch)
            for k, v in state.running.items():
                self.writer.add_scalar(f"epoch/{k}", v, state.epoch)
            if "data_wait_fraction" in record:
                self.writer.add_scalar("epoch/data_wait_fraction", record["data_wait_fraction"], state.epoch)
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


class Checkpointer:
    """Writes and reads a run's checkpoints in ``run_dir``: model, optimizer, gradient scaler,
    sampler position and :class:`vipmt.training.TrainerState` (whose ``state_dict`` keys are
    top-level keys of the file), every rank's random streams; rank 0 writes, atomically."""

    def __init__(self, run_dir: str, dist_info: du.DistInfo):
        self.run_dir, self.dist = run_dir, dist_info

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def what_is_kept(self) -> str:
        """For the error that stops a run: the checkpoint a resume would continue from, if any."""
        last = self.path(LAST_CHECKPOINT)
        return (f"the last good checkpoint {last!r} is kept (continue with --resume)" if os.path.exists(last)
                else "no checkpoint had been written yet")

    def save(self, trainer: "Trainer", name: str) -> Optional[str]:
        """The complete training state as ``run_dir/name`` (a collective: every rank calls it)."""
        state = trainer.state
        fields = state.state_dict()
        rng = du.all_gather_object(fields.pop("rng")[0])            # every rank's streams, in rank order
        path = None
        if self.dist.is_main:
            sampler = dict(trainer.sampler.state_dict(), epoch=state.epoch, start_batch=state.iteration)
            path = save_checkpoint(self.path(name), model=trainer.model, optimizer=trainer.optimizer,
                                   scaler=trainer.scaler, config=trainer.cfg, epoch=fields.pop("epoch"),
                                   iteration=fields.pop("iteration"), global_step=fields.pop("global_step"),
                                   best_metric=fields.pop("best_metric"), best_epoch=fields.pop("best_epoch"),
                                   sampler_state=sampler, rng_states=rng, metrics=fields.pop("metrics"),
                                   extra=dict(fields, world_size=self.dist.world_size))
        du.barrier()
        return path

    def save_weights(self, trainer: "Trainer", name: str) -> str:
        """Weights, config and epoch only (rank 0), as the authors' epoch files."""
        state = trainer.state
        return save_weights(self.path(name), model=trainer.model, epoch=state.epoch, config=trainer.cfg,
                            best_metric=state.best_metric, best_epoch=state.best_epoch,
                            metrics={"history": state.history})

    def copy(self, path: str, name: str) -> str:
        """``path`` as ``run_dir/name`` (the same file, hard-linked when possible)."""
        return atomic_copy(path, self.path(name))

    def restore(self, trainer: "Trainer", ckpt: Mapping[str, Any]) -> None:
        """Model, optimizer, scaler and state from one of our full checkpoints; the optimizer takes
        the config's lr, betas and weight_decay (a resume may change them: config.OPTIMIZER_KEYS)."""
        load_model_state(trainer.model, ckpt["state_dict"], source="resume checkpoint", hint=CHECKPOINT_HINT)
        try:
            trainer.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"resume checkpoint: the optimizer state does not fit the model ({exc})") from None
        cfg = trainer.cfg
        for group in trainer.optimizer.param_groups:
            group.update(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        if ckpt.get("scaler") and trainer.scaler.is_enabled():
            trainer.scaler.load_state_dict(ckpt["scaler"])
        trainer.state.load_state_dict(ckpt, rank=self.dist.rank, world_size=self.dist.world_size)
        state = trainer.state
        logger.info("resumed after epoch %d%s (step %d, best mean class IoU %s)", state.epoch,
                    f" + {state.iteration} iterations" if state.iteration else "", state.global_step,
                    "n/a" if state.best_metric is None else f"{state.best_metric:.4f}")


class CheckpointHook(HookBase):
    """``last.pth`` at epoch ends, every ``checkpoint_every_iters`` iterations and when the run stops
    inside an epoch; ``best.pth`` when validation improved; ``epoch_NNN.pth`` every ``save_every`` epochs.

    ``last.pth`` and ``best.pth`` hold the complete training state. The periodic files hold the
    weights, config and epoch only, as the authors' epoch files (528 MB instead of 1395 MB at
    240x424: no Adam moments), unless ``periodic_checkpoint_full`` makes them complete too.
    """

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer

    def after_step(self, trainer: "Trainer", losses: Dict[str, float]) -> None:
        done, every = trainer.state.iteration, trainer.cfg.checkpoint_every_iters
        inside_epoch = done < trainer.batches_per_epoch()            # the epoch's end saves anyway
        if trainer.stop_reason is not None or (inside_epoch and every and done % every == 0):
            self.checkpointer.save(trainer, LAST_CHECKPOINT)

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        state, saver = trainer.state, self.checkpointer
        last = saver.save(trainer, LAST_CHECKPOINT)
        if trainer.dist.is_main:             # best (and full periodic): the same file, hard-linked when possible
            if state.best_epoch == state.epoch:
                saver.copy(last, BEST_CHECKPOINT)
            if state.epoch % trainer.cfg.save_every == 0:
                periodic = f"epoch_{state.epoch:03d}.pth"
                if trainer.cfg.periodic_checkpoint_full:
                    saver.copy(last, periodic)
                else:
                    saver.save_weights(trainer, periodic)
        du.barrier()


def metrics_line(record: Mapping[str, Any]) -> str:
    """One epoch's history record as a line of ``metrics.jsonl``."""
    return json.dumps(plain_data(record, finite_only=True)) + "\n"


class MetricsFileHook(HookBase):
    """``run_dir/metrics.jsonl`` (rank 0): one JSON line per finished epoch with its mean losses
    (``train_*``), the validation IoU per class (``val_class_iou``) and their mean, the step count
    and the learning rate.

    At the start the file is rewritten from the checkpoint's history, so that after a resume it
    holds each finished epoch once (also when a crash came between a line and its checkpoint);
    then each epoch appends its line and flushes it to disk. Runs after :class:`CheckpointHook`,
    so a line never names an epoch that ``last.pth`` does not hold.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, METRICS_FILE)

    def before_train(self, trainer: "Trainer") -> None:
        if trainer.dist.is_main:
            atomic_write_text(self.path, "".join(metrics_line(r) for r in trainer.state.history))

    def after_epoch(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        if trainer.dist.is_main:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(metrics_line(record))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:        # a full disk; a cut line is rewritten from last.pth on --resume
                raise write_error(self.path, exc) from None


def default_hooks(run_dir: str, *, validation: HookBase, checkpointer: Checkpointer) -> List[HookBase]:
    """Validation first (the others use its result), then logging, checkpoints, the metrics file."""
    return [validation, LoggingHook(run_dir), CheckpointHook(checkpointer), MetricsFileHook(run_dir)]
