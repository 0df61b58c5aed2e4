"""Training: a small loop (:class:`Trainer`) and where it stands (:class:`TrainerState`).

Each training episode is 15 query frames cut into three 5-frame clips and 5 support images
of the same class. Clip 1 is segmented against the supports; clip 2 against the supports plus
the 5 frames of clip 1 with their ground-truth masks; clip 3 against the supports plus 5 frames
drawn at random (sorted) from the 10 earlier frames (``models.episode``). The loss is the sum
over clips. Adam on all trainable parameters; mixed precision (float16 autocast) with a
gradient scaler on CUDA. Under AMP a step whose gradients are inf/nan is skipped by the scaler
(which lowers its scale); skipped steps are counted and logged, and ``amp_max_consecutive_skips``
of them in a row stop the run. In float32 a non-finite loss stops the run before it reaches the
weights.

The :class:`Trainer` receives what it uses - the model, optimizer, gradient scaler and training
episode (:class:`vipmt.build.TrainingParts`), the data (:class:`vipmt.build.TrainingData`) and
its hooks (:class:`HookBase`; a run's are validation, logging, checkpoints and the metrics file:
:mod:`vipmt.hooks`, :mod:`vipmt.checkpointer`) - and builds none of them (a run is put together
by :func:`vipmt.run.run_training`); it only steps: :meth:`Trainer.train_step` does one optimizer
step and says what it did, :meth:`Trainer.fit` runs the epochs and calls the hooks around steps
and epochs. It stops early, after saving ``last.pth`` (the checkpoint hook), when ``--stop-after``
steps are done or a stop signal arrived (the signal handling is the run's, :mod:`vipmt.run`);
``--resume`` continues bit-identically.

Everything a resume needs besides the model, optimizer and scaler is in :class:`TrainerState`
(``state_dict`` / ``load_state_dict``); its keys are top-level keys of the checkpoint file.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol

import torch

from utils import distributed as du
from utils.checkpoint import capture_rng_state, restore_rng_state
from utils.runtime import RANK_SEED_STRIDE, seed_everything

from .build import TrainingData, TrainingParts, amp_autocast, available_cpus

__all__ = ["TrainingError", "TrainerState", "StepResult", "HookBase", "Trainer"]

logger = logging.getLogger("train")
DATA_WAIT_WARNING = 0.2              # warn (once) when the loop waited for data longer than this share of an epoch


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


class KeepsCheckpoints(Protocol):
    """What the trainer asks of a run's checkpointer (:class:`vipmt.checkpointer.Checkpointer`)."""

    def what_is_kept(self) -> str:
        """For the error that stops a run: the checkpoint a resume would continue from, if any."""


class StepResult(Dict[str, float]):
    """One step's losses averaged over ranks (``loss`` and its terms ``main``, ``aux``, ``contrast``,
    ``score``); ``skipped``: AMP's gradient scaler skipped the update (inf/nan gradients)."""

    def __init__(self, losses: Mapping[str, float], *, skipped: bool):
        super().__init__(losses)
        self.skipped = skipped


class DataWait:
    """This epoch's wait for data (detectron2's ``data_time``): the seconds from asking the loader
    for a batch to getting it, against the steps' whole seconds (fetch + step + hooks)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.last = self.waited = self.total = 0.0
        self.steps = 0
        self._mark = time.perf_counter()

    def fetched(self) -> None:
        """A batch arrived."""
        self.last = time.perf_counter() - self._mark
        self.waited += self.last

    def stepped(self) -> None:
        """The step and its hooks are done; the next fetch starts."""
        now = time.perf_counter()
        self.total += now - self._mark
        self.steps += 1
        self._mark = now

    def summary(self) -> Dict[str, float]:
        """``data_time`` (mean seconds per step) and ``data_wait_fraction`` of this epoch's steps."""
        if not self.steps:
            return {}
        return {"data_time": self.waited / self.steps, "data_wait_fraction": self.waited / max(self.total, 1e-12)}


class Trainer:
    """Steps a model through the epochs of a run and calls its hooks around steps and epochs.

    Args:
        cfg: the resolved config (clip_length, memory_size, grad_clip, epochs, seed, ...).
        device: where the model runs.
        parts: the model, the module that trains it (DDP or the model), Adam, the gradient scaler and
            the training episode (:func:`vipmt.build.build_training_parts`, or
            :func:`vipmt.build.training_parts_for` a given model).
        data: the splits and sampler (:func:`vipmt.build.build_training_data`); only :meth:`fit`
            needs them (:meth:`train_step` takes its batch), so None serves a step-only trainer.
        hooks: called in list order (a run's: :func:`vipmt.hooks.default_hooks`).
        dist_info: this process's place in the DDP world (one process by default).
        checkpointer: names the checkpoint a stopping error keeps (None: no checkpoint is written).
    """

    def __init__(self, cfg, *, device: torch.device, parts: TrainingParts, data: Optional[TrainingData],
                 hooks: Iterable[HookBase], dist_info: du.DistInfo = du.DistInfo(),
                 checkpointer: Optional[KeepsCheckpoints] = None):
        self.cfg, self.dist, self.device = cfg, dist_info, device
        self.data = data
        self.model, self.train_module = parts.model, parts.train_module
        self.optimizer, self.scaler, self.episode = parts.optimizer, parts.scaler, parts.episode
        self.use_amp = self.scaler.is_enabled()
        self.checkpointer = checkpointer
        self.hooks: List[HookBase] = list(hooks)
        self.state = TrainerState()
        self.stop_after: Optional[int] = None
        self.stop_signal: Callable[[], Optional[int]] = lambda: None     # the signal that asked to stop, if any
        self.stop_reason: Optional[str] = None          # 'interrupted' / 'stopped' once the loop is to end
        self.data_wait = DataWait()
        self._warned_data_wait = False

    # -------------------------------------------------------------- the data
    @property
    def train_set(self):
        return self.data.train_set

    @property
    def val_set(self):
        return self.data.val_set

    @property
    def sampler(self):
        return self.data.sampler

    def batches_per_epoch(self) -> int:
        return self.data.sampler.batches_per_epoch()

    # -------------------------------------------------------------- one step
    def _check_finite(self, clip_loss: torch.Tensor, clip: int) -> None:
        """Float32: stop every rank together when a loss is NaN/inf (before it reaches the weights)."""
        bad = du.all_reduce_sum(0.0 if bool(torch.isfinite(clip_loss.detach()).all()) else 1.0)
        if bad:
            raise TrainingError(f"non-finite loss ({float(clip_loss.detach()):.4g}) in clip {clip} at epoch "
                                f"{self.state.epoch + 1}, iteration {self.state.iteration + 1}; training stopped "
                                f"before the weights were updated; {self._what_is_kept()}. Try a lower learning "
                                f"rate (--resume --lr ...).")

    def _what_is_kept(self) -> str:
        return self.checkpointer.what_is_kept() if self.checkpointer is not None else "no checkpoint is written"

    def backward(self, loss: torch.Tensor, clip: int) -> None:
        """Backward of clip ``clip``'s (1-based) loss, through the gradient scaler, outside autocast."""
        if not self.use_amp:            # under AMP the scaler finds inf/nan gradients and skips the update
            self._check_finite(loss, clip)
        with torch.autocast(device_type=self.device.type, enabled=False):
            self.scaler.scale(loss).backward()

    def train_step(self, batch: Dict[str, Any]) -> StepResult:
        """One optimizer step on a batch of episodes (query_img [B,T,3,H,W], query_mask [B,T,1,H,W],
        support_img [B,S,3,H,W], support_mask [B,S,1,H,W]): the losses averaged over ranks, and
        whether the gradient scaler skipped the update."""
        from models.episode import plan_episode  # noqa: WPS433
        from models.losses import LOSS_TERMS  # noqa: WPS433

        cfg = self.cfg
        tensors = [batch[k].to(self.device, non_blocking=True)
                   for k in ("query_img", "query_mask", "support_img", "support_mask")]
        plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, self.state.memory_generator)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        clip_counter = iter(range(1, len(plans) + 1))
        with amp_autocast(self.device, self.use_amp):
            results = self.episode(self.train_module, *tensors, plans,
                                   backward=lambda loss: self.backward(loss, next(clip_counter)))
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        scale_before = self.scaler.get_scale() if self.use_amp else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # GradScaler skips optimizer.step when a gradient is inf/nan, then multiplies its scale by
        # backoff_factor (< 1); otherwise the scale stays or grows. Under DDP the gradients are
        # all-reduced first, so every rank sees the same skip.
        skipped = self.use_amp and self.scaler.get_scale() < scale_before
        names = ["loss"] + [f"{n}_loss" for n in LOSS_TERMS]
        values = torch.stack([sum(r[n].float() for r in results) for n in names])
        values = du.all_reduce_mean(values).tolist()
        return StepResult(zip(["loss", *LOSS_TERMS], values), skipped=skipped)

    def _after_skipped_step(self, losses: Mapping[str, float]) -> None:
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

    # -------------------------------------------------------------- the loop
    def _warn_if_waiting(self, record: Mapping[str, Any], workers: int) -> None:
        """Once per run: the model waited for data more than DATA_WAIT_WARNING of an epoch."""
        fraction = record.get("data_wait_fraction", 0.0)
        if self._warned_data_wait or fraction <= DATA_WAIT_WARNING:
            return
        self._warned_data_wait = True
        logger.warning("epoch %d: the model waited for data %.0f %% of the time (%.3f s per step): the loader "
                       "is the bottleneck; raise num_workers (now %s = %d worker(s) per process, %d CPU(s) "
                       "available) or augment with fast_augment=true", record["epoch"], 100 * fraction,
                       record["data_time"], self.cfg.num_workers, workers, available_cpus())

    def begin_epoch(self) -> None:
        """Seed (or, resuming inside it, restore) the random streams and position the data."""
        epoch = self.state.epoch
        self.state.start_epoch(self.cfg.seed + epoch + self.dist.rank * RANK_SEED_STRIDE)
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, self.state.iteration)

    def _stop_reason(self, *, epoch_end: bool) -> Optional[str]:
        """'interrupted' (a stop signal reached any rank: the ranks agree, so they stop at the same
        step), 'stopped' (--stop-after steps done) or None. Neither stops at the run's end; and
        inside an epoch, --stop-after lets its last step finish the epoch."""
        state = self.state
        if epoch_end and state.epoch >= self.cfg.epochs:
            return None
        if du.all_reduce_sum(0.0 if self.stop_signal() is None else 1.0) > 0:
            return "interrupted"
        steps_done = self.stop_after is not None and state.global_step >= self.stop_after
        if steps_done and (epoch_end or state.iteration < self.batches_per_epoch()):
            return "stopped"
        return None

    def _log_stop(self) -> None:
        state, batches = self.state, self.batches_per_epoch()
        if self.stop_reason == "interrupted":
            signum = self.stop_signal()
            name = signal.Signals(signum).name if signum else "a signal to another rank"
            logger.warning("interrupted at epoch %d, iteration %d/%d (%s, step %d): last.pth saved; continue with "
                           "--resume", state.epoch + 1, state.iteration, batches, name, state.global_step)
        elif state.iteration:
            logger.info("stopped after %d steps (--stop-after), inside epoch %d at iteration %d/%d; continue with "
                        "--resume", state.global_step, state.epoch + 1, state.iteration, batches)
        else:
            logger.info("stopped after %d steps (--stop-after) at the end of epoch %d; continue with --resume",
                        state.global_step, state.epoch)

    def fit(self, stop_after: Optional[int] = None,
            stop_signal: Optional[Callable[[], Optional[int]]] = None) -> str:
        """Train from the current state to ``cfg.epochs``: 'finished', 'stopped' by ``stop_after``
        steps, or 'interrupted' when ``stop_signal()`` names a signal (checked after every step)."""
        cfg, state = self.cfg, self.state
        self.stop_after, self.stop_reason = stop_after, None
        if stop_signal is not None:
            self.stop_signal = stop_signal
        for hook in self.hooks:
            hook.before_train(self)
        try:
            while state.epoch < cfg.epochs:
                self.begin_epoch()
                loader = self.data.train_loader(state.epoch)
                for hook in self.hooks:
                    hook.before_epoch(self)
                self.data_wait.reset()
                for batch in loader:
                    self.data_wait.fetched()
                    result = self.train_step(batch)
                    state.record_step(result, skipped=result.skipped)
                    if result.skipped:
                        self._after_skipped_step(result)
                    self.stop_reason = self._stop_reason(epoch_end=False)
                    for hook in self.hooks:
                        hook.after_step(self, result)
                    if self.stop_reason:
                        self._log_stop()
                        return self.stop_reason
                    self.data_wait.stepped()
                record = state.finish_epoch()
                record.update(global_step=state.global_step, lr=self.optimizer.param_groups[0]["lr"],
                              **self.data_wait.summary())
                self._warn_if_waiting(record, loader.num_workers)
                for hook in self.hooks:
                    hook.after_epoch(self, record)
                self.stop_reason = self._stop_reason(epoch_end=True)      # (last.pth was just saved)
                if self.stop_reason:
                    self._log_stop()
                    return self.stop_reason
            return "finished"
        finally:
            for hook in self.hooks:
                hook.after_train(self)
