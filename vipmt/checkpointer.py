"""A run's checkpoints: what a resume needs, written and read back in one place.

:class:`Checkpointer` is the one owner of our checkpoint files' training contents: the model,
optimizer, gradient scaler, sampler position, :class:`vipmt.training.TrainerState` and every
rank's random streams are written by :meth:`Checkpointer.save` and read back by
:meth:`Checkpointer.restore` (the file format itself is :mod:`utils.checkpoint`'s).
:class:`CheckpointHook` calls it around the training steps: ``last.pth`` after every epoch,
every ``checkpoint_every_iters`` iterations and when the run stops inside an epoch
(``--stop-after``, a stop signal); ``best.pth`` (complete) and every ``save_every`` epochs
``epoch_NNN.pth`` (weights only unless ``periodic_checkpoint_full``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional

from utils import distributed as du
from utils.checkpoint import CheckpointError, load_model_state, save_checkpoint, save_weights
from utils.fileio import atomic_copy

from .build import BEST_CHECKPOINT, LAST_CHECKPOINT
from .loading import CHECKPOINT_HINT
from .training import HookBase, Trainer

__all__ = ["Checkpointer", "CheckpointHook"]

logger = logging.getLogger("train")


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
