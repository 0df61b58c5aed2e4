"""The paper's table over folds: per fold and the mean over folds, from test.py's results of each.

:func:`summarise` turns the folds' test results (each checked with :func:`test_results_problem`)
into ``results.json``'s numbers, :func:`results_markdown` into ``results.md`` (the papers' layout:
a column per fold and the mean, J and F rows). ``reproduce.py`` (:mod:`vipmt.reproduce`) writes both.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .evaluation import mean_and_std

__all__ = ["RESULTS_JSON", "RESULTS_MD", "TABLE_METRICS", "test_results_problem", "summarise", "results_markdown"]

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
TABLE_METRICS = ("J", "F")          # the rows of the papers' table (results.json holds every metric)


def test_results_problem(results: Any, metric_keys: Sequence[str]) -> Optional[str]:
    """What makes ``results`` (a parsed results JSON) unusable for the table, or None: test.py writes a
    mapping with ``config``, ``aggregate`` (``mean`` of every metric, ``seeds``) and a list of ``runs``."""
    if not isinstance(results, dict):
        return f"it holds a {type(results).__name__}, not test.py's results (a mapping)"
    for key, kind in (("config", dict), ("aggregate", dict), ("runs", list)):
        if not isinstance(results.get(key), kind):
            return f"its {key!r} is {'missing' if key not in results else 'not a ' + kind.__name__}"
    mean = results["aggregate"].get("mean")
    if not isinstance(mean, dict) or not all(isinstance(mean.get(k), dict) and "mean" in mean[k] for k in metric_keys):
        return f"its aggregate's 'mean' lacks some of {list(metric_keys)}"
    if not isinstance(results["aggregate"].get("seeds"), list):
        return "its aggregate's 'seeds' is missing"
    if not results["runs"] or not all(isinstance(r, dict) and isinstance(r.get("mean"), dict) for r in results["runs"]):
        return "its 'runs' are not test runs (each a mapping with a 'mean')"
    return None


def summarise(folds: Sequence[Any], metric_keys: Sequence[str]) -> Dict[str, Any]:
    """``{"folds": {G: {metric: {mean, std}, ...}}, "mean": {metric: {mean, std}}}`` of ``folds``, each with
    ``group``, ``results`` (test.py's results JSON) and ``results_file`` (vipmt.reproduce.FoldRun).

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
