"""The paper's table in one command: train and test every fold, then J and F per fold and their mean.

:func:`reproduce` is the whole of ``reproduce.py``. For each fold (``group``) it

1. trains the fold's run ``<output_dir>/<dataset>_group<G>`` (the directory ``train.py --group G``
   uses) with :func:`vipmt.run.run_training` and ``auto_resume``: a new run starts, an
   interrupted one continues exactly from its ``last.pth``, a finished one (``last.pth`` at the
   last epoch) is not touched;
2. tests its ``best.pth`` with the paper's protocol and ``test_runs`` seeds
   (:func:`vipmt.evaluation.run_test`), unless that test's results file
   (``<run>/test/test_best_seeds<S>-<E>.json``) is newer than ``best.pth`` and was made with the
   same test settings;
3. writes ``<output_dir>/reproduce_<dataset>/results.json`` and ``results.md``: per fold and
   mean over the folds, J, F, class IoU and VC_n as mean and std over the test runs; the JSON
   also holds the config, the git commit, the commands and ``seconds`` (this invocation's wall
   time; each fold's ``test_seconds`` is its test's).

``collect=True`` (``--collect``) only assembles the table from finished runs and their current
test results (after folds ran in parallel, one process each), and names what is missing. Every
step is logged to ``<output_dir>/reproduce_<dataset>/reproduce.log`` with its fold, so the log
says which fold is where.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from config import ConfigError, config_to_dict, resume_changes
from config.config import NUM_FOLDS
from utils import distributed as du
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.fileio import atomic_write_json, atomic_write_text, unwritable_reason
from utils.log import setup_logging
from utils.provenance import git_state
from utils.runtime import EXIT_STOPPED, UserError

from .build import BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_FILE, run_directory
from .cli import resolve_config
from .evaluation import _stats as mean_and_std  # noqa: WPS450 - the one mean/std over runs (None, nan left out)
from .evaluation import metric_names, results_path, run_test
from .run import run_training
from .rundir import run_contents

__all__ = ["RESULTS_JSON", "RESULTS_MD", "REPRODUCE_LOG", "TABLE_METRICS", "results_folder", "FoldRun",
           "training_status", "current_test_results", "summarise", "results_markdown", "reproduce"]

logger = logging.getLogger("reproduce")

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
REPRODUCE_LOG = "reproduce.log"
TABLE_METRICS = ("J", "F")          # the rows of the papers' table (results.json holds every metric)
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


def results_folder(cfg) -> str:
    """``<output_dir>/reproduce_<dataset>``: results.json, results.md and reproduce.log."""
    return os.path.join(cfg.output_dir, f"reproduce_{cfg.dataset}")


@dataclass
class FoldRun:
    """One fold: its config, run directory and what reproduce found or did there."""
    group: int
    values: Dict[str, Any]            # the explicit config values, with this fold's group
    cfg: Any                          # resolved from ``values``
    results: Optional[Dict[str, Any]] = None      # run_test's JSON for best.pth
    results_file: Optional[str] = None

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


def _test_settings(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_TEST_SETTINGS}


def current_test_results(fold: FoldRun) -> Optional[Dict[str, Any]]:
    """run_test's results of this fold's best.pth when they are current (written after best.pth, with
    the same test settings), else None."""
    path = results_path(fold.cfg, None)
    best = os.path.join(fold.run_dir, BEST_CHECKPOINT)
    if not (os.path.isfile(path) and os.path.isfile(best)) or os.path.getmtime(path) < os.path.getmtime(best):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    used, wanted = _test_settings(results.get("config") or {}), _test_settings(fold.cfg)
    if "image_size" not in fold.values:        # then test.py takes the checkpoint's size
        used.pop("image_size", None)
        wanted.pop("image_size", None)
    if used != wanted:
        return None
    fold.results_file = path
    return results


# ================================================================ the table
def summarise(folds: Sequence[FoldRun], metric_keys: Sequence[str]) -> Dict[str, Any]:
    """``{"folds": {G: {metric: {mean, std}, ...}}, "mean": {metric: {mean, std}}}``.

    A fold's entry is its test's mean over classes, as mean and (population) std over the test
    runs. The overall ``mean`` is the plain mean of the folds' means; its ``std`` is the std over
    the test runs of the per-run mean over the folds (the runs of every fold use the same seeds).
    """
    per_fold: Dict[str, Any] = {}
    for fold in folds:
        agg = fold.results["aggregate"]
        entry = {k: dict(agg["mean"][k]) for k in metric_keys}
        entry.update(checkpoint=fold.results.get("checkpoint"), test_results=fold.results_file,
                     seeds=agg.get("seeds"), test_seconds=fold.results.get("seconds"))
        per_fold[str(fold.group)] = entry
    mean: Dict[str, Any] = {}
    for key in metric_keys:
        fold_means = [per_fold[str(f.group)][key]["mean"] for f in folds]
        runs = [[run["mean"].get(key) for run in f.results["runs"]] for f in folds]
        if any(m is None for m in fold_means):
            mean[key] = {"mean": None, "std": None}
            continue
        same_runs = len({len(r) for r in runs}) == 1
        per_run = [float(np.mean(col)) for col in zip(*runs) if None not in col] if same_runs else []
        mean[key] = {"mean": float(np.mean(fold_means)), "std": mean_and_std(per_run)["std"]}
    return {"folds": per_fold, "mean": mean}


def _cell(stat: Mapping[str, Optional[float]], runs: int) -> str:
    if stat.get("mean") is None:
        return "n/a"
    text = f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['std']:.1f}" if runs > 1 and stat.get("std") is not None else "")


def results_markdown(summary: Mapping[str, Any], *, dataset: str, runs: int, seeds: Sequence[int],
                     commands: Sequence[str]) -> str:
    """results.md: the papers' layout (a column per fold and the mean; J and F rows), in %."""
    groups = list(summary["folds"])
    lines = [f"# VIPMT on {dataset}: J and F per fold (%)", "",
             "| | " + " | ".join(f"Fold-{g}" for g in groups) + " | Mean |",
             "|---|" + "---|" * (len(groups) + 1)]
    for key in TABLE_METRICS:
        cells = [_cell(summary["folds"][g][key], runs) for g in groups] + [_cell(summary["mean"][key], runs)]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    spread = (f"mean ± std over {runs} test runs (seeds {seeds[0]}-{seeds[-1]}; the std of the mean column is "
              f"over the runs' means over the folds)" if runs > 1 else f"one test run (seed {seeds[0]})")
    lines += ["", f"J: region similarity (mean IoU per video), F: contour accuracy; {spread}. Every metric, "
                  f"including class IoU and VC, is in {RESULTS_JSON}.", "", "Produced by:", "", "```"]
    lines += list(commands) + ["```", ""]
    return "\n".join(lines)


def _equivalent_commands(fold: FoldRun) -> List[str]:
    """train.py / test.py command lines that do what reproduce did for this fold."""
    settings = " ".join(shlex.quote(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
                        for k, v in sorted(fold.values.items()) if k not in ("group", "test_runs"))
    settings = (" " + settings) if settings else ""
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
    return [FoldRun(group=g, values=dict(values, group=g), cfg=resolve_config({}, dict(values, group=g)))
            for g in sorted(groups)]


def _log_to(folder: str) -> None:
    setup_logging(os.path.join(folder, REPRODUCE_LOG))     # appends; training and test replace it meanwhile


def reproduce(values: Mapping[str, Any], *, folds: Sequence[int], collect: bool = False,
              command: Sequence[str] = ()) -> int:
    """Train (or continue, or reuse) and test each fold, then write results.json and results.md.

    ``values`` are explicit config values (vipmt.cli.explicit_values) shared by the folds; ``folds``
    the groups. Returns the exit status: 0; 75 when a signal stopped training (rerun the same command to
    continue); 1 when a fold's training failed. ``collect``: train and test nothing, assemble the
    table from finished runs and current test results (UserError naming each fold that lacks them).
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
        for index, fold in enumerate(runs, 1):
            status = _train(fold, index, len(runs), command)
            _log_to(folder)
            if status != 0:
                logger.warning("%s: training %s; rerun the same command to continue",
                               fold.label, "stopped by a signal" if status == EXIT_STOPPED else "failed")
                return status
            _test(fold, index, len(runs))
            _log_to(folder)
    table = _write_results(runs, command=command, started=started)
    logger.info("results of folds %s written to %s and %s:\n%s", " ".join(str(f.group) for f in runs),
                os.path.join(folder, RESULTS_JSON), RESULTS_MD, table)
    return 0


def _train(fold: FoldRun, index: int, count: int, command: Sequence[str]) -> int:
    status = training_status(fold)
    where = f"{fold.label} ({index}/{count})"
    if status == "finished":
        logger.info("%s: training finished earlier in %s: reusing it", where, fold.run_dir)
        return 0
    logger.info("%s: training in %s (%s)", where, fold.run_dir,
                "continuing from last.pth" if status == "partial" else "new run")
    return run_training(fold.values, auto_resume=True, command=[*command, f"(fold {fold.group})"])


def _test(fold: FoldRun, index: int, count: int) -> None:
    where = f"{fold.label} ({index}/{count})"
    fold.results = current_test_results(fold)
    if fold.results is not None:
        logger.info("%s: test results of %s are current: reusing %s", where, BEST_CHECKPOINT, fold.results_file)
        return
    logger.info("%s: testing %s with %d run(s)", where, os.path.join(fold.run_dir, BEST_CHECKPOINT),
                fold.cfg.test_runs)
    results = run_test(fold.values)
    fold.results = {k: v for k, v in results.items() if k not in ("table", "output")}    # = the JSON written
    fold.results_file = results["output"]


def _collect(runs: Sequence[FoldRun]) -> None:
    missing = []
    for fold in runs:
        try:
            status = training_status(fold)
        except CheckpointError as exc:
            missing.append(f"{fold.label}: {exc}")
            continue
        if status != "finished":
            missing.append(f"{fold.label}: training {'not finished' if status == 'partial' else 'not started'} "
                           f"in {fold.run_dir!r}")
            continue
        fold.results = current_test_results(fold)
        if fold.results is None:
            missing.append(f"{fold.label}: no current test results {results_path(fold.cfg, None)!r} (none, older "
                           f"than {BEST_CHECKPOINT}, or made with other test settings)")
        else:
            logger.info("%s: using %s", fold.label, fold.results_file)
    if missing:
        raise UserError("--collect: " + "; ".join(missing) + ". Run reproduce.py without --collect for these "
                        "folds (the same settings) first")
