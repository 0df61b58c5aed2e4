"""The paper's table in one command: train and test every fold, then J and F per fold and their mean.

:func:`reproduce` is the whole of ``reproduce.py``. For each fold (``group``) it

1. trains the fold's run ``<output_dir>/<dataset>_group<G>`` (the directory ``train.py --group G``
   uses) with :func:`vipmt.run.run_training` and ``auto_resume``: a new run starts, an
   interrupted one continues exactly from its ``last.pth``, a finished one (``last.pth`` at the
   last epoch) is not touched. Every fold's run is checked before any trains: one trained with
   other settings than those asked for is refused, naming both (:func:`check_trained_settings`),
   so the table never credits settings its runs were not trained with;
2. tests its ``best.pth`` with the paper's protocol and ``test_runs`` seeds
   (:func:`vipmt.testrun.run_test`), unless that test's results file
   (``<run>/test/test_best_seeds<S>-<E>.json``) is newer than ``best.pth``, has test.py's shape
   and was made with the same test settings;
3. writes ``<output_dir>/reproduce_<dataset>/results.json`` and ``results.md``: per fold and
   mean over the folds, J, F, class IoU and VC_n as mean and std over the test runs; the JSON
   also holds the config, the git commit, the commands and ``seconds`` (this invocation's wall
   time; each fold's ``test_seconds`` is its test's). Folds the table held beyond ``--folds``
   stay in it when their runs and test results are current for these settings; otherwise
   reproduce refuses before training, unless ``--drop-other-folds``.

``collect=True`` (``--collect``) only assembles the table from finished runs and their current
test results (after folds ran in parallel, one process each), and names what is missing. Every
step is logged to ``<output_dir>/reproduce_<dataset>/reproduce.log`` with its fold, so the log
says which fold is where.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shlex
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from config import ConfigError, complete_saved_config, config_to_dict, resume_changes
from config.config import NUM_FOLDS
from utils import distributed as du
from utils.checkpoint import CheckpointError, corruption_reason, load_checkpoint
from utils.fileio import atomic_write_json, atomic_write_text, unwritable_reason, write_error
from utils.log import setup_logging
from utils.provenance import git_state
from utils.runtime import EXIT_STOPPED, UserError

from .build import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE, run_directory
from .cli import resolve_config
from .evaluation import metric_names
from .fold_table import RESULTS_JSON, RESULTS_MD, results_markdown, summarise, test_results_problem
from .run import run_training
from .rundir import run_contents
from .testrun import results_path, run_test

__all__ = ["REPRODUCE_LOG", "results_folder", "FoldRun", "training_status", "check_trained_settings", "inspect_run",
           "current_test_results", "reproduce"]

logger = logging.getLogger("reproduce")

REPRODUCE_LOG = "reproduce.log"
# Keys that cannot change what test.py computes for a given best.pth: training's own settings and
# where things run or are written. Every other key (the protocol, the data, the seeds) must be the
# same for a test result to be reused; a key added later counts as one that matters.
NOT_TEST_SETTINGS = frozenset({
    "epochs", "batch_size", "lr", "betas", "weight_decay", "episodes_per_class", "val_episodes_per_class",
    "val_batch_size", "query_frames", "loss_weight_main", "loss_weight_aux", "loss_weight_contrast",
    "loss_weight_score", "amp", "amp_on_cpu", "amp_max_consecutive_skips", "grad_clip", "check_data",
    "save_every", "periodic_checkpoint_full", "checkpoint_every_iters", "validate_every", "log_every",
    "backbone_weights", "num_workers", "device", "output_dir", "run_name",
})
# Keys that cannot change what training computes: where it runs, reads and writes, how often it logs
# and saves, and test.py's own settings (compared with the test results' instead). Every other key
# must be the run's own for reproduce.py to reuse or continue it (``epochs`` may grow: the run
# continues); a key added later counts as one that matters.
NOT_TRAINING_SETTINGS = frozenset({
    "youtube_vis_root", "minivspw_root", "num_workers", "check_data", "device", "output_dir", "run_name",
    "save_every", "periodic_checkpoint_full", "checkpoint_every_iters", "log_every",
    "memory_threshold", "memory_pool_size", "predictor_memory_pool_size", "vc_window", "test_runs", "test_bf16",
    "test_video_batch", "test_compile",
})


def results_folder(cfg) -> str:
    """``<output_dir>/reproduce_<dataset>``: results.json, results.md and reproduce.log."""
    return os.path.join(cfg.output_dir, f"reproduce_{cfg.dataset}")


@dataclass
class FoldRun:
    """One fold: its config, run directory and what reproduce found or did there."""
    group: int
    values: Dict[str, Any]            # the explicit config values, with this fold's group
    cfg: Any                          # resolved from ``values``
    status: Optional[str] = None                  # training_status, once :func:`inspect_run` looked
    results: Optional[Dict[str, Any]] = None      # run_test's JSON for best.pth
    results_file: Optional[str] = None
    test_problem: Optional[str] = None            # why the results file on disk is not current, if it is not

    @property
    def run_dir(self) -> str:
        return run_directory(self.cfg)

    @property
    def label(self) -> str:
        return f"fold {self.group}"


# ================================================================ what a fold's run directory holds
def _read_fields(path: str) -> Dict[str, Any]:
    """A checkpoint's fields with its tensors memory-mapped (not read): epoch and config of a 1.4 GB file."""
    return load_checkpoint(path, mmap=True)


def _last_logged_epoch(run_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(run_dir, METRICS_FILE), encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        return int(json.loads(lines[-1])["epoch"]) if lines else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_status(fold: FoldRun) -> str:
    """'finished', 'partial' (last.pth before the last epoch) or 'new' (nothing to continue).

    A finished or partial run must have been trained with this fold's run-defining settings
    (config.RUN_DEFINING_KEYS): otherwise a UserError names the differences. Whether a run is there
    is vipmt.rundir's rule (any of last.pth, best.pth, epoch_NNN.pth, metrics.jsonl): a run directory
    with best.pth but without last.pth counts as finished when its metrics.jsonl reached the last
    epoch; any other trained run without last.pth is a UserError saying what is there.
    """
    last = os.path.join(fold.run_dir, LAST_CHECKPOINT)
    contents = run_contents(fold.run_dir)
    if not contents.resumable:
        if not contents.trained:
            return "new"
        logged = _last_logged_epoch(fold.run_dir)
        if contents.best and logged is not None and logged >= fold.cfg.epochs:
            return "finished"
        raise UserError(f"{fold.label}: " + contents.refusal(
            f"it cannot be continued, and its {METRICS_FILE} does not show the last epoch ({fold.cfg.epochs}) of a "
            f"finished run", elsewhere="choose another --output-dir"))
    ckpt = _read_fields(last)
    saved = resolve_config(ckpt.get("config") or {}, {})
    cfg = resolve_config(saved, fold.values)             # what --auto-resume would run with
    try:
        resume_changes(saved, cfg)
    except ConfigError as exc:
        raise UserError(f"{fold.label}: {fold.run_dir!r} holds a run trained with other settings: {exc}; or "
                        f"choose another --output-dir") from None
    if int(ckpt.get("epoch", 0)) >= cfg.epochs and not int(ckpt.get("iteration", 0)):
        return "finished"
    return "partial"


def _assignment(key: str, value: Any) -> str:
    """``key=value`` as written on the command line (lists as a,b)."""
    return f"{key}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


def _trained_config(fold: FoldRun):
    """(the config the fold's run was last trained with, the checkpoint it comes from), or None when the
    run holds neither last.pth nor best.pth."""
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        path = os.path.join(fold.run_dir, name)
        if os.path.isfile(path):
            saved, _legacy = complete_saved_config(_read_fields(path).get("config") or {})
            return resolve_config(saved, {}), name
    return None


def check_trained_settings(fold: FoldRun) -> None:
    """UserError unless the fold's run was trained with the settings asked for (every key but
    NOT_TRAINING_SETTINGS; ``epochs`` may grow), naming both values and the options: a run trained at
    lr=5e-4 is never tabulated as lr=0.01."""
    found = _trained_config(fold)
    if found is None:
        return
    trained, source = found
    differ = [key for key in trained if key not in NOT_TRAINING_SETTINGS and trained[key] != fold.cfg[key]
              and not (key == "epochs" and fold.cfg.epochs > trained.epochs)]
    if not differ:
        return
    was = " ".join(_assignment(k, trained[k]) for k in differ)
    asked = " ".join(_assignment(k, fold.cfg[k]) + ("" if k in fold.values else " (the default)") for k in differ)
    also = (f"; or continue it with the new settings first (python train.py --group {fold.group}{_settings_text(fold)} "
            f"--auto-resume: the change is then recorded in the run)" if fold.status == "partial" else "")
    raise UserError(f"{fold.label}: {fold.run_dir!r} holds a run trained with {was} (its {source}), but this command "
                    f"asks {asked}; reproduce.py reuses or continues a run only with the settings it was trained "
                    f"with, so that the table credits them. Give the run's values ({was}) to tabulate it; or, to "
                    f"train with {asked}, choose another --output-dir or move {fold.run_dir!r} away{also}")


def _damaged_run_error(fold: FoldRun, exc: CheckpointError) -> UserError:
    """The error for a checkpoint of the fold's run that cannot be read: the file is the run's own
    (nothing to copy again), so say how to go on without it."""
    last = os.path.join(fold.run_dir, LAST_CHECKPOINT)
    damage = corruption_reason(last) if repr(last) in str(exc) and os.path.isfile(last) else None
    if damage is None:
        return UserError(f"{fold.label}: {exc}")
    complete = [p for p in [os.path.join(fold.run_dir, BEST_CHECKPOINT),
                            *sorted(glob.glob(os.path.join(fold.run_dir, "epoch_*.pth")), reverse=True)]
                if os.path.isfile(p)]
    resume = (f"continue the run from an earlier complete checkpoint ({' or '.join(map(repr, complete[:2]))}; an "
              f"epoch_NNN.pth is complete only with periodic_checkpoint_full=true): python train.py --group "
              f"{fold.group}{_settings_text(fold)} --resume-from {shlex.quote(complete[0])}, then rerun this "
              f"command; or " if complete else "")
    return UserError(f"{fold.label}: its {LAST_CHECKPOINT} {last!r} is corrupt or truncated ({damage}), so the run "
                     f"cannot continue from it. Move it away (mv {last!r} {last + '.damaged'!r}) and {resume}move "
                     f"{fold.run_dir!r} away to train {fold.label} anew")


def inspect_run(fold: FoldRun) -> str:
    """The fold's training_status, once its run was checked: trained with the settings asked for
    (:func:`check_trained_settings`), its checkpoints readable (a damaged one is a UserError saying
    what to do). Sets and returns ``fold.status``."""
    try:
        fold.status = training_status(fold)
        if fold.status != "new":
            check_trained_settings(fold)
    except CheckpointError as exc:
        raise _damaged_run_error(fold, exc) from None
    return fold.status


def _test_settings(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_TEST_SETTINGS}


def current_test_results(fold: FoldRun) -> Optional[Dict[str, Any]]:
    """run_test's results of this fold's best.pth when they are current (written after best.pth, with
    the same test settings, in test.py's shape), else None with ``fold.test_problem`` saying why."""
    path = results_path(fold.cfg, None)
    best = os.path.join(fold.run_dir, BEST_CHECKPOINT)
    fold.test_problem = f"no test results {path!r}"
    if not (os.path.isfile(path) and os.path.isfile(best)):
        return None
    if os.path.getmtime(path) < os.path.getmtime(best):
        fold.test_problem = f"the test results {path!r} are older than {BEST_CHECKPOINT}"
        return None
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as exc:
        fold.test_problem = f"the test results {path!r} cannot be read ({exc})"
        return None
    problem = test_results_problem(results, metric_names(fold.cfg))
    if problem:
        fold.test_problem = f"the test results {path!r} are not usable: {problem}"
        return None
    used, wanted = _test_settings(results["config"]), _test_settings(fold.cfg)
    if "image_size" not in fold.values:        # then test.py takes the checkpoint's size
        used.pop("image_size", None)
        wanted.pop("image_size", None)
    changed = sorted(k for k in set(used) | set(wanted) if used.get(k) != wanted.get(k))
    if changed:
        fold.test_problem = f"the test results {path!r} were made with other test settings ({', '.join(changed)})"
        return None
    fold.test_problem = None
    fold.results_file = path
    return results


# ================================================================ results.json, results.md
def _settings_text(fold: FoldRun) -> str:
    """The fold's explicit settings as train.py / test.py arguments (with a leading space), but the fold."""
    settings = " ".join(shlex.quote(_assignment(k, v)) for k, v in sorted(fold.values.items())
                        if k not in ("group", "test_runs"))
    return (" " + settings) if settings else ""


def _equivalent_commands(fold: FoldRun) -> List[str]:
    """train.py / test.py command lines that do what reproduce did for this fold."""
    settings = _settings_text(fold)
    return [f"python train.py --group {fold.group}{settings} --auto-resume",
            f"python test.py --group {fold.group}{settings} --runs {fold.cfg.test_runs}"]


def _write_results(folds: Sequence[FoldRun], *, command: Sequence[str], started: float) -> str:
    cfg = folds[0].cfg
    keys = metric_names(cfg)
    summary = summarise(folds, keys)
    first = folds[0].results["aggregate"]
    commands = [" ".join(shlex.quote(c) for c in command)] if command else []
    commands += ["# what it runs per fold:"] + [c for f in folds for c in _equivalent_commands(f)]
    shared = {k: v for k, v in config_to_dict(cfg).items() if k not in ("group", "run_name")}
    commit = git_state()
    results = {"dataset": cfg.dataset, "metrics": keys, **summary, "test_runs": cfg.test_runs,
               "seeds": first.get("seeds"), "config": dict(shared, folds=[f.group for f in folds]),
               "commit": commit["git_commit"], "git_dirty": commit["git_dirty"], "commands": commands,
               "seconds": round(time.time() - started, 1)}
    folder = results_folder(cfg)
    atomic_write_json(os.path.join(folder, RESULTS_JSON), results)
    atomic_write_text(os.path.join(folder, RESULTS_MD),
                      results_markdown(summary, dataset=cfg.dataset, runs=cfg.test_runs, seeds=first["seeds"],
                                       commands=commands))
    table = results_markdown(summary, dataset=cfg.dataset, runs=cfg.test_runs, seeds=first["seeds"], commands=[])
    return table.split("\n\n")[1]


# ================================================================ reproduce.py
def _folds(values: Mapping[str, Any], groups: Sequence[int]) -> List[FoldRun]:
    if "group" in values:
        raise UserError(f"reproduce.py takes its folds from --folds; drop the fold given as a config value "
                        f"(group={values['group']}, e.g. from --group or --split)")
    if values.get("run_name"):
        raise UserError("reproduce.py names each fold's run <dataset>_group<G> (the directory train.py --group G "
                        "uses); drop --run-name and choose the location with --output-dir")
    bad = [g for g in groups if not 1 <= g <= NUM_FOLDS]
    if bad or not groups:
        raise UserError(f"--folds: expected fold numbers 1..{NUM_FOLDS}, got {list(groups)}")
    if len(set(groups)) != len(groups):
        raise UserError(f"--folds lists a fold twice: {list(groups)}")
    return [_fold(values, g) for g in sorted(groups)]


def _fold(values: Mapping[str, Any], group: int) -> FoldRun:
    return FoldRun(group=group, values=dict(values, group=group), cfg=resolve_config({}, dict(values, group=group)))


def _log_to(folder: str) -> None:
    """Log to ``folder``'s reproduce.log (appending) from now on. The file handlers open until now
    (reproduce.log, or a fold's train.log) are closed first: on a full disk their last lines cannot be
    flushed, a WriteError naming the file (one ``error:`` line), not a traceback."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        try:
            handler.close()
        except OSError as exc:
            raise write_error(handler.baseFilename, exc) from None
    setup_logging(os.path.join(folder, REPRODUCE_LOG))     # appends; training and test replace it meanwhile


def _tabulated_folds(folder: str) -> List[int]:
    """The folds of the table ``folder`` holds (results.json), [] when there is none or it is not one."""
    try:
        with open(os.path.join(folder, RESULTS_JSON), encoding="utf-8") as f:
            folds = json.load(f).get("folds")
        return sorted(int(g) for g in folds)
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def _kept_folds(runs: Sequence[FoldRun], values: Mapping[str, Any], folder: str, drop: bool) -> List[FoldRun]:
    """The folds the existing table holds beyond ``runs``, with their current test results, so that a
    narrower ``--folds`` adds to the table instead of replacing it. UserError when one of them cannot be
    kept (its run or test results are not current for these settings), unless ``drop``."""
    asked = {fold.group for fold in runs}
    others = [g for g in _tabulated_folds(folder) if g not in asked and 1 <= g <= NUM_FOLDS]
    if not others:
        return []
    if drop:
        logger.warning("dropping folds %s from the table in %s (--drop-other-folds)", " ".join(map(str, others)),
                       folder)
        return []
    kept, problems = [], []
    for fold in (_fold(values, g) for g in others):
        try:
            problem = _tabulation_problem(fold)
        except UserError as exc:
            problem = str(exc)
        if problem:
            problems.append(problem)
        else:
            kept.append(fold)
    if problems:
        table = " ".join(map(str, sorted(asked | set(others))))
        raise UserError(f"{os.path.join(folder, RESULTS_JSON)!r} tabulates folds {' '.join(map(str, others))} too, "
                        f"and they cannot be kept in the new table: " + "; ".join(problems) + f". Run them too "
                        f"(--folds {table}), or pass --drop-other-folds to write a table of folds "
                        f"{' '.join(str(g) for g in sorted(asked))} only, or choose another --output-dir")
    for fold in kept:
        logger.info("%s: kept in the table (not in --folds): its run is finished and %s is current", fold.label,
                    fold.results_file)
    return kept


def reproduce(values: Mapping[str, Any], *, folds: Sequence[int], collect: bool = False,
              drop_other_folds: bool = False, command: Sequence[str] = ()) -> int:
    """Train (or continue, or reuse) and test each fold, then write results.json and results.md.

    ``values`` are explicit config values (vipmt.cli.explicit_values) shared by the folds; ``folds``
    the groups. Every fold's run is checked before any trains (:func:`inspect_run`: a run trained
    with other settings than these is refused, naming both). Folds the existing table holds beyond
    ``folds`` stay in it when their runs and test results are current (:func:`_kept_folds`; else a
    UserError, unless ``drop_other_folds``). Returns the exit status: 0; 75 when a signal stopped training (rerun
    the same command to continue); 1 when a fold's training failed. ``collect``: train and test
    nothing, assemble the table from finished runs and current test results (UserError naming each
    fold that lacks them).
    """
    started = time.time()
    if du.env_world_size() > 1:
        raise UserError("reproduce.py runs as one process (per set of folds); to train a fold on several GPUs use "
                        "torchrun ... train.py --group G --auto-resume, which reproduce.py then reuses")
    runs = _folds(values, folds)
    folder = results_folder(runs[0].cfg)
    problem = unwritable_reason(folder)
    if problem:
        raise UserError(f"cannot write the results folder {folder!r}: {problem}. Choose another --output-dir")
    os.makedirs(folder, exist_ok=True)
    _log_to(folder)
    logger.info("%s folds %s of %s: %s", "collecting" if collect else "reproducing",
                " ".join(str(f.group) for f in runs), runs[0].cfg.dataset, " ".join(command))
    if collect:
        _collect(runs)
    else:
        for fold in runs:                      # every fold's run checked before any trains
            inspect_run(fold)
    table_folds = sorted([*runs, *_kept_folds(runs, values, folder, drop_other_folds)], key=lambda f: f.group)
    if not collect:
        for index, fold in enumerate(runs, 1):
            status = _train(fold, index, len(runs), command)
            _log_to(folder)
            if status != 0:
                logger.warning("%s: training %s; rerun the same command to continue",
                               fold.label, "stopped by a signal" if status == EXIT_STOPPED else "failed")
                return status
            _test(fold, index, len(runs))
            _log_to(folder)
    table = _write_results(table_folds, command=command, started=started)
    logger.info("results of folds %s written to %s and %s:\n%s", " ".join(str(f.group) for f in table_folds),
                os.path.join(folder, RESULTS_JSON), RESULTS_MD, table)
    return 0


def _train(fold: FoldRun, index: int, count: int, command: Sequence[str]) -> int:
    where = f"{fold.label} ({index}/{count})"
    if fold.status == "finished":
        logger.info("%s: training finished earlier in %s: reusing it", where, fold.run_dir)
        return 0
    logger.info("%s: training in %s (%s)", where, fold.run_dir,
                "continuing from last.pth" if fold.status == "partial" else "new run")
    return run_training(fold.values, auto_resume=True, command=[*command, f"(fold {fold.group})"])


def _test(fold: FoldRun, index: int, count: int) -> None:
    where = f"{fold.label} ({index}/{count})"
    fold.results = current_test_results(fold)
    if fold.results is not None:
        logger.info("%s: test results of %s are current: reusing %s", where, BEST_CHECKPOINT, fold.results_file)
        return
    logger.info("%s: testing %s with %d run(s) (%s)", where, os.path.join(fold.run_dir, BEST_CHECKPOINT),
                fold.cfg.test_runs, fold.test_problem)
    results = run_test(fold.values)
    fold.results = {k: v for k, v in results.items() if k not in ("table", "output")}    # = the JSON written
    fold.results_file = results["output"]


def _tabulation_problem(fold: FoldRun) -> Optional[str]:
    """What reproduce.py has yet to do before the fold can go into the table (train it, test it), or None,
    with ``fold.results`` set. A run it must not use raises UserError (:func:`inspect_run`)."""
    status = inspect_run(fold)
    if status != "finished":
        return (f"{fold.label}: training {'not finished' if status == 'partial' else 'not started'} in "
                f"{fold.run_dir!r}")
    fold.results = current_test_results(fold)
    return None if fold.results is not None else f"{fold.label}: {fold.test_problem}"


def _collect(runs: Sequence[FoldRun]) -> None:
    problems, to_run = [], []
    for fold in runs:
        try:
            problem = _tabulation_problem(fold)
        except UserError as exc:                 # says itself what to do
            problems.append(str(exc))
            continue
        if problem:
            problems.append(problem)
            to_run.append(str(fold.group))
        else:
            logger.info("%s: using %s", fold.label, fold.results_file)
    if problems:
        advice = (f". Run reproduce.py --folds {' '.join(to_run)} without --collect (the same settings) first"
                  if to_run else "")
        raise UserError("--collect: " + "; ".join(problems) + advice)
