"""What happens around the training steps: validation, logging, checkpoints, the metrics file.

:meth:`vipmt.training.Trainer.fit` calls its hooks before and after each step and epoch, in
list order (:func:`default_hooks`):

* :class:`vipmt.validation.ValidationHook` (given to :func:`default_hooks`) - after every
  ``validate_every`` epochs (and the last) validates; its mean class IoU sets the best epoch;
* :class:`LoggingHook` - tqdm bar, ``train.log`` lines (through ``logging``), TensorBoard scalars;
* :class:`vipmt.checkpointer.CheckpointHook` - ``last.pth``, ``best.pth`` and ``epoch_NNN.pth``
  through the run's :class:`vipmt.checkpointer.Checkpointer` (its own module: the one owner of
  what a checkpoint holds for a resume);
* :class:`MetricsFileHook` - ``metrics.jsonl``, one JSON line per finished epoch.

The hooks derive from :class:`vipmt.training.HookBase`, which lives with the loop.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional

from tqdm import tqdm

from utils.fileio import atomic_write_text, write_error
from utils.plain import plain_data

from .build import METRICS_FILE, TENSORBOARD_DIR
from .checkpointer import CheckpointHook, Checkpointer
from .training import HookBase, Trainer

__all__ = ["LoggingHook", "MetricsFileHook", "default_hooks", "metrics_line"]

logger = logging.getLogger("train")




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
