"""A whole training run, as ``train.py`` runs it: config, run directory, DDP, signals, fit, exit status.

:func:`run_training` checks every input that needs no model first (config, dataset root,
backbone file, a writable run directory, the torchrun environment); rank 0 then holds the run
directory (:class:`RunDirectoryHold`: a second run on it is refused, naming the holder) before the
process group starts. A new run is refused where a trained run is (:func:`vipmt.rundir.run_contents`:
any of last.pth, best.pth, epoch_NNN.pth, metrics.jsonl), so nothing trained is overwritten.
Resuming, the checkpoint's saved config is the base and the command line's values go over it,
except the run-defining keys (config.RUN_DEFINING_KEYS), which must not change.

SIGINT, SIGTERM, SIGUSR1 and SIGHUP during training (:mod:`vipmt.signals`) finish the current
step, write ``last.pth`` and end the run with status 75 (``EXIT_STOPPED``; "interrupted at epoch
e, iteration i" in train.log); ``--resume`` / ``--auto-resume`` continue bit-identically. Only a
second Ctrl-C, 2 s or more after the first, exits at once without saving (status 130; the
previous ``last.pth`` is intact: writes are atomic).
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, List, Mapping, Optional, Sequence

from config import (OPTIMIZER_KEYS, ConfigError, complete_saved_config, read_config_file, resume_changes, save_config,
                    update_config)
from utils import distributed as du
from utils.checkpoint import is_resumable, load_checkpoint
from utils.fileio import WriteError, unwritable_reason
from utils.log import FILE_ONLY, close_file_handlers, setup_logging
from utils.runlock import LOCK_FILE, RunLock
from utils.runtime import EXIT_FAILURE, EXIT_STOPPED, UserError, resolve_device

from .build import (AMP_DTYPE, CONFIG_FILE, LAST_CHECKPOINT, LOG_FILE, backbone_weights_path, build_training_data,
                    build_training_parts, require_dataset, run_directory)
from .checkpointer import Checkpointer
from .cli import resolve_config
from .hooks import default_hooks
from .rundir import run_contents
from .signals import StopSignals
from .loading import saved_config
from .training import Trainer, TrainingError
from .validation import ValidationHook, validate_episodes

__all__ = ["find_resume_checkpoint", "has_resumable_run", "RunDirectoryHold", "run_training"]

logger = logging.getLogger("train")


def find_resume_checkpoint(cfg, resume_from: Optional[str]) -> str:
    """The checkpoint to continue: ``resume_from``, or the run directory's last.pth."""
    if not resume_from:
        contents = run_contents(run_directory(cfg))
        path = os.path.join(run_directory(cfg), LAST_CHECKPOINT)
        if not contents.resumable and contents.trained:
            raise UserError("--resume: " + contents.refusal("there is nothing to continue"))
        if not contents.resumable:
            raise UserError(f"--resume: nothing to resume, {path!r} does not exist (the run "
                            f"{run_directory(cfg)!r} has not saved a checkpoint yet). Start without "
                            f"--resume, or name the run to continue: --resume-from CHECKPOINT, or "
                            f"--run-name NAME (and --output-dir DIR) of an earlier run.")
        return path
    if not os.path.exists(resume_from):           # a directory: load_checkpoint names it as one
        raise UserError(f"--resume-from: checkpoint {resume_from!r} does not exist")
    return resume_from


def has_resumable_run(cfg) -> bool:
    """Whether the run directory of ``cfg`` holds last.pth (what --auto-resume continues; without it,
    a trained run there is refused by the fresh start's guard in :func:`run_training`)."""
    return run_contents(run_directory(cfg)).resumable


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
        close_file_handlers(self.run_dir)     # train.log's handler, before its file goes
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
    """(config to use, changes) for a resume; ConfigError for run-defining changes.

    The config to use is the checkpoint's, with the command line's values over it; its
    output_dir / run_name name the directory the run continues in (--resume-from may point
    elsewhere than they said).
    """
    saved_values, legacy = complete_saved_config(ckpt.get("config") or {})
    if legacy:
        logger.warning("the checkpoint's config predates %s: its run used %s (the behaviour then), and "
                       "the resumed run continues with it", ", ".join(legacy),
                       ", ".join(f"{key}={value}" for key, value in legacy.items()))
    saved = resolve_config(saved_values, {})
    cfg = resolve_config(saved, values)
    if os.path.abspath(run_directory(cfg)) != os.path.abspath(run_dir):
        cfg = update_config(cfg, {"output_dir": os.path.dirname(run_dir), "run_name": os.path.basename(run_dir)})
    return cfg, resume_changes(saved, cfg)


def _report_edited_config(path: str, cfg: Mapping[str, Any]) -> None:
    """A resume rewrites the run directory's config.yaml with the config it uses; say in one line which
    values of the file it does not use (a hand edit is applied only through ``--config``)."""
    if not os.path.isfile(path):
        return
    try:
        written = read_config_file(path)
    except ConfigError as exc:
        logger.warning("%s is not used and is rewritten: %s", path, exc)
        return
    # output_dir / run_name: the directory the file is in decides where the run continues
    unused = {key: value for key, value in written.items()
              if value != cfg[key] and key not in ("output_dir", "run_name")}
    if unused:
        logger.warning("%s differs from the config this resume uses in %s: not applied (pass --config %s to "
                       "apply it); the file is rewritten with the values in use", path,
                       ", ".join(f"{key} (file {value!r}, used {cfg[key]!r})" for key, value in unused.items()),
                       path)


def _describe_changes(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" + (" (set on the optimizer)" if key in OPTIMIZER_KEYS else "")
                     for key, (old, new) in changes.items())


def run_training(values: Mapping[str, Any], *, resume: bool = False, resume_from: Optional[str] = None,
                 auto_resume: bool = False, stop_after: Optional[int] = None, command: Sequence[str] = ()) -> int:
    """Train one fold: check the inputs, take the run directory, set up DDP and logging, and fit.

    ``values`` are explicit config values (vipmt.cli.explicit_values). ``auto_resume`` (train.py
    --auto-resume): resume when the run directory holds last.pth, start afresh otherwise, so that
    torchrun --max-restarts or a requeued job can rerun the same command line; a trained run without
    last.pth is refused, as by a fresh start. Returns the exit status: 0, 1 when training failed,
    75 (EXIT_STOPPED) when a signal stopped it (last.pth saved); a Ctrl-C before training or a second
    one raises KeyboardInterrupt / exits with 130.
    """
    if stop_after is not None and stop_after < 1:
        raise UserError(f"--stop-after {stop_after}: expected a number of optimizer steps >= 1 (the run stops, "
                        f"saving last.pth, once that many steps are done in total)")
    du.distributed_env()                         # a broken torchrun environment: one error before anything else
    cfg = resolve_config({}, values)
    if auto_resume and (resume or resume_from):
        raise UserError("--auto-resume decides by itself whether to resume; give it without --resume / "
                        "--resume-from")
    checkpoint_path = None
    if resume or resume_from or (auto_resume and has_resumable_run(cfg)):
        checkpoint_path = find_resume_checkpoint(cfg, resume_from)
        run_dir = os.path.dirname(os.path.abspath(checkpoint_path))
    else:
        run_dir = run_directory(cfg)
        backbone_weights_path(cfg, required=True, warn=False)
        require_dataset(cfg)
    problem = unwritable_reason(run_dir)
    if problem:
        raise UserError(f"cannot write the run directory {run_dir!r}: {problem}. Choose another --output-dir "
                        f"(or --run-name)")

    hold = RunDirectoryHold(run_dir).acquire() if du.env_rank() == 0 else None
    try:
        with StopSignals(announce=du.env_rank() == 0).handled() as signals:
            return _train_in(run_dir, cfg, values, hold=hold, checkpoint_path=checkpoint_path, stop_after=stop_after,
                             command=command, auto_resume=auto_resume, signals=signals)
    except BaseException:
        if hold is not None:
            hold.discard_failed_start()
        raise
    finally:
        if hold is not None:
            hold.release()


def _refuse_trained_run(run_dir: str, *, auto_resume: bool) -> None:
    """A new run must not start where a trained run is (vipmt.rundir): UserError saying what is there."""
    contents = run_contents(run_dir)
    if contents.resumable:
        raise UserError(f"run directory {run_dir!r} already holds a checkpoint ({LAST_CHECKPOINT}); "
                        f"pass --resume to continue it (--auto-resume: continue when there is one, else start; for "
                        f"restarted jobs), or choose another --run-name / --output-dir")
    if contents.trained:
        raise UserError(contents.refusal("a new run would overwrite them" + (
            f" (--auto-resume continues only a {LAST_CHECKPOINT})" if auto_resume else "")))


def _train_in(run_dir: str, cfg, values: Mapping[str, Any], *, hold: Optional[RunDirectoryHold],
              checkpoint_path: Optional[str], stop_after: Optional[int], command: Sequence[str],
              signals: StopSignals, auto_resume: bool = False) -> int:
    """The part of :func:`run_training` that runs with the run directory held (by rank 0) and the stop
    signals routed to ``signals`` (a KeyboardInterrupt until training begins)."""
    resume_ckpt, changes = None, {}
    if checkpoint_path is not None:
        resume_ckpt = load_checkpoint(checkpoint_path)
        if not is_resumable(resume_ckpt):
            raise UserError(f"--resume: {checkpoint_path!r} is not a resumable training checkpoint of this "
                            f"project (it has no optimizer/epoch state); test it with test.py --checkpoint")
        saved_config(resume_ckpt, checkpoint_path)     # a bad saved value is named as the checkpoint's
        cfg, changes = _resolve_resumed_config(values, resume_ckpt, run_dir)
        require_dataset(cfg)
    else:
        _refuse_trained_run(run_dir, auto_resume=auto_resume)
    dist_info = du.init_distributed(resolve_device(cfg.device).type)
    try:
        device = resolve_device(cfg.device, dist_info.local_rank)
        du.barrier()                                   # rank 0 has created the directory
        setup_logging(os.path.join(run_dir, LOG_FILE), rank=dist_info.rank)
        if hold is not None:
            for name in hold.lock.remove_stale_temporaries():
                logger.info("removed %s (a write interrupted by an earlier crash)", name)
            if checkpoint_path is not None:
                _report_edited_config(os.path.join(run_dir, CONFIG_FILE), cfg)
            save_config(cfg, os.path.join(run_dir, CONFIG_FILE))
        logger.info("run directory %s; command: %s", run_dir, " ".join(command))
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))   # set by torchrun for its workers
        if restarts:
            logger.warning("torchrun restarted the workers (restart %d of at most %s)", restarts,
                           os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?"))
        if auto_resume:
            logger.info("--auto-resume: %s", f"continuing from {checkpoint_path}" if checkpoint_path else
                        f"no {LAST_CHECKPOINT} in the run directory, starting a new run")
        if changes:
            logger.warning("resuming with changed config values: %s", _describe_changes(changes))
        trainer = _build_trainer(cfg, dist_info, device, run_dir, resume_ckpt)
        if changes:
            trainer.state.record_config_change(changes)
        try:
            signals.start_training()
            status = trainer.fit(stop_after=stop_after, stop_signal=signals.received)
        except WriteError as exc:              # a full disk: every earlier checkpoint is intact (atomic writes)
            logger.error("error: %s", exc, extra=FILE_ONLY)     # the wrapper prints it on stderr
            raise
        except TrainingError as exc:
            logger.error("%s", exc)
            if dist_info.is_main:
                print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        if status == "interrupted":
            return EXIT_STOPPED
        if status == "finished" and dist_info.is_main:
            best = trainer.state
            logger.info("training finished: best mean class IoU %s at epoch %s; checkpoints in %s",
                        "n/a" if best.best_metric is None else f"{best.best_metric:.4f}", best.best_epoch, run_dir)
        return 0
    finally:
        du.cleanup_distributed()


def _build_trainer(cfg, dist_info: du.DistInfo, device, run_dir: str,
                   resume_ckpt: Optional[Mapping[str, Any]]) -> Trainer:
    """The one place a training run is put together: data, model, optimizer, scaler, episode, checkpointer
    and hooks (vipmt.build, vipmt.hooks) handed to the Trainer; resumed from ``resume_ckpt`` when given."""
    data = build_training_data(cfg, dist_info, device)
    weights = None if resume_ckpt is not None else backbone_weights_path(cfg, required=True)
    parts = build_training_parts(cfg, dist_info, device, backbone_weights=weights)
    checkpointer = Checkpointer(run_dir, dist_info)
    validate = functools.partial(validate_episodes, data=data, cfg=cfg, device=device, dist_info=dist_info,
                                 amp=parts.scaler.is_enabled())
    trainer = Trainer(cfg, device=device, dist_info=dist_info, parts=parts, data=data, checkpointer=checkpointer,
                      hooks=default_hooks(run_dir, validation=ValidationHook(validate), checkpointer=checkpointer))
    if resume_ckpt is not None:
        checkpointer.restore(trainer, resume_ckpt)
    amp = f"on ({AMP_DTYPE}, loss scale {parts.scaler.get_scale():g})" if parts.scaler.is_enabled() else "off"
    logger.info("train: %s; val: %s; %d trainable parameters; device %s%s; AMP %s", data.train_set, data.val_set,
                sum(p.numel() for p in parts.model.parameters() if p.requires_grad), device,
                f" x {dist_info.world_size} processes" if dist_info.distributed else "", amp)
    return trainer
