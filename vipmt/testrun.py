"""A whole test.py run, as ``vipmt.run`` is a whole train.py run: config, outputs, model, protocol, results.

:func:`run_test` resolves the config once, checks the dataset and the output locations before any
weights are read, holds the results file's lock (:func:`results_lock`), loads the model under
test (:func:`model_under_test`: the checkpoint's trained image size unless ``image_size`` is
given), builds the engine from the config (:func:`vipmt.segmenter.make_segmenter`), runs the
protocol of :mod:`vipmt.evaluation` for ``test_runs`` seeds and writes the results JSON and a
log (:func:`write_results`; the default path is :func:`results_path`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from typing import Any, Dict, Mapping, Optional

from config import DEFAULTS, ConfigError, config_to_dict, update_config
from utils.checkpoint import CheckpointError
from utils.distributed import cleanup_distributed, env_rank, init_distributed
from utils.fileio import WriteError, atomic_write_json, unwritable_reason
from utils.log import setup_logging
from utils.runlock import RunLock
from utils.runtime import UserError, resolve_device, seed_everything

from .build import BEST_CHECKPOINT, CONFIG_FILE, backbone_weights_path, build_model, require_dataset, run_directory
from .cli import resolve_config
from .evaluation import aggregate, evaluate_split, format_table, metric_names
from .loading import LoadedModel, model_from_checkpoint, read_trained_checkpoint
from .segmenter import compile_seconds, engine_settings, make_segmenter

__all__ = ["RESULTS_FOLDER", "UNTRAINED", "checkpoint_to_test", "results_path", "check_output_locations",
           "results_lock", "write_results", "model_under_test", "warn_if_shots_differ", "run_test"]

logger = logging.getLogger(__name__)

RESULTS_FOLDER = "test"                   # test.py writes <run dir>/test/test_<checkpoint>_<seeds>.{json,log}
UNTRAINED = "none"                        # --checkpoint none: the untrained model


def checkpoint_to_test(cfg, checkpoint: Optional[str]) -> str:
    """``--checkpoint`` as given, else the run's ``best.pth`` (``<output_dir>/<run_name>/best.pth``)."""
    return checkpoint or os.path.join(run_directory(cfg), BEST_CHECKPOINT)


def results_path(cfg, checkpoint: Optional[str]) -> str:
    """Where test.py writes its JSON by default (the log goes beside it, ``.log``).

    ``<run dir>/test/test_<checkpoint name>_seed<S>.json`` (``_seeds<S>-<E>`` for several runs), so
    results of different checkpoints and seeds never overwrite each other. The run directory is
    the checkpoint's own folder when it is one of ours (``config.yaml`` beside it), otherwise
    ``<output_dir>/<run_name>`` of the config (an authors' file, or ``--checkpoint none``).
    """
    path = checkpoint_to_test(cfg, checkpoint)
    if path.lower() == UNTRAINED:
        name, folder = "untrained", run_directory(cfg)
    else:
        name = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            folder = run_directory(cfg)
    last_seed = cfg.seed + cfg.test_runs - 1
    seeds = f"seed{cfg.seed}" if cfg.test_runs == 1 else f"seeds{cfg.seed}-{last_seed}"
    return os.path.join(folder, RESULTS_FOLDER, f"test_{name}_{seeds}.json")


def check_output_locations(*, output: str, save_vis: Optional[str], given: bool = True) -> None:
    """Refuse, before any model is loaded, outputs that cannot be written (UserError naming the path), and
    an existing ``--output`` (``given``: not the default path in the run's test/ folder) that is not a
    results file of test.py: the results would replace it (a checkpoint, an annotation file ...)."""
    if os.path.isdir(output):
        raise UserError(f"--output {output!r} is a directory; expected the path of the results JSON file")
    other = _not_results_file(output) if given else None
    if other:
        raise UserError(f"--output {output!r} already exists and is not a results file of test.py ({other}); "
                        f"test.py replaces only its own results. Choose another --output path")
    reason = unwritable_reason(os.path.dirname(os.path.abspath(output)))
    if reason:
        raise UserError(f"cannot write the results file {output!r}: {reason}")
    if save_vis:
        if os.path.exists(save_vis) and not os.path.isdir(save_vis):
            raise UserError(f"--save-vis {save_vis!r} is a file; expected a folder for the overlays")
        reason = unwritable_reason(save_vis)
        if reason:
            raise UserError(f"cannot write the overlays to {save_vis!r}: {reason}")


RESULTS_KEYS = ("aggregate", "runs")          # what marks a JSON file as test.py's results


def _not_results_file(path: str) -> Optional[str]:
    """What the existing file ``path`` is, when it is not a results JSON of test.py (None: absent, or one)."""
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path):
        return "not a regular file"
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith(b"{"):
        return f"a {os.path.getsize(path)}-byte file that is not JSON (a checkpoint, a video ...?)"
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return "a file that does not parse as JSON"
    if not isinstance(found, dict) or not all(key in found for key in RESULTS_KEYS):
        return "a JSON file without test.py's 'aggregate' and 'runs'"
    return None


def results_lock(output: str):
    """The lock of one results file (``.<name>.lock`` beside it): a second test.py writing the same
    JSON and log is refused, naming the first; tests of other checkpoints or seeds share the folder."""
    if env_rank() != 0:                      # DDP: rank 0 holds it for the job
        return contextlib.nullcontext()
    folder, name = os.path.split(os.path.abspath(output))
    return RunLock(folder, name=f".{name}.lock", label=f"results file {output!r}",
                   advice="Wait for that test to finish or stop it, or pass another --output.")


def write_results(output: str, results: Mapping[str, Any], table: str) -> None:
    """Write the results JSON atomically. When it cannot be written (a full disk), what was computed
    is kept: the table goes to stdout, the JSON to a fallback file, and the WriteError names it."""
    try:
        atomic_write_json(output, results)
        return
    except WriteError as exc:
        failure = exc
    print(table, flush=True)
    stem = os.path.splitext(os.path.basename(output))[0]
    for folder in (tempfile.gettempdir(), os.getcwd(), os.path.expanduser("~")):
        fallback = os.path.join(folder, f"{stem}.unsaved-{os.getpid()}.json")
        try:
            atomic_write_json(fallback, results)
        except OSError:
            continue
        raise WriteError(failure.errno, f"{failure}; the table is printed above and the results are saved to "
                                        f"{fallback!r}")
    print(json.dumps(results, default=str), flush=True)
    raise WriteError(failure.errno, f"{failure}; no fallback file could be written either, so the table and "
                                    f"the results JSON are printed above")


def model_under_test(cfg, path: str, *, size_given: bool, trusted: bool = False) -> LoadedModel:
    """The model at ``path`` (a checkpoint file, or 'none': untrained, built from ``cfg``), on the CPU.

    Unless ``size_given`` (image_size set explicitly), the checkpoint's trained image size is set on
    ``cfg`` before the model is built for ``cfg.image_size``: the config and the model always agree.
    """
    if path.lower() == UNTRAINED:
        logger.warning("testing an UNTRAINED model (--checkpoint none)")
        seed_everything(cfg.seed)                 # the same initial weights as train.py's
        model = build_model(cfg, backbone_weights=backbone_weights_path(cfg, required=True))
        return LoadedModel(model=model.eval(), config=None, description="none (untrained)")
    trained = read_trained_checkpoint(path, trusted=trusted)
    if not size_given and trained.image_size is not None:        # the size the model was trained for
        try:
            update_config(cfg, {"image_size": list(trained.image_size)})
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path!r}: its saved config is invalid: {exc}") from None
    warn_if_shots_differ(trained.config, cfg.support_shots)
    return model_from_checkpoint(trained, cfg.image_size)


def warn_if_shots_differ(trained_config: Optional[Mapping[str, Any]], test_shots: int) -> None:
    """A warning when the model is tested with another number of annotated supports than it was
    trained with (an authors' checkpoint, without a config, was trained with 5)."""
    trained = (trained_config or {}).get("support_shots", DEFAULTS.support_shots)
    if trained != test_shots:
        logger.warning("the model was trained with %d annotated support(s) per episode and is tested with %d: "
                       "a distribution shift (the support branch sees fewer/more frames than in training); "
                       "for a %d-shot protocol train with support_shots=%d", trained, test_shots, test_shots,
                       test_shots)


def run_test(values: Mapping[str, Any], *, checkpoint: Optional[str] = None, output: Optional[str] = None,
             save_vis: Optional[str] = None, trusted: bool = False) -> Dict[str, Any]:
    """test.py's whole job: load, run ``test_runs`` seeds, aggregate, write the JSON and a log; returns the results.

    ``values`` are explicit config values (see vipmt.cli); ``checkpoint`` a path, None (the run's
    best.pth) or 'none' (the untrained model); ``output`` defaults to :func:`results_path` (the
    log is written beside it, same name, ``.log``); ``save_vis`` writes overlays of the first run.
    Output locations are checked before the model is loaded, and the results file is locked
    (:func:`results_lock`) while the test runs. The results hold ``config`` (the resolved config,
    with the model's image size), ``engine`` (what the engine was built with,
    :func:`vipmt.segmenter.engine_settings`) and ``table`` (the text table). When the JSON cannot
    be written, :func:`write_results` keeps it in a fallback file it names.

    Under torchrun (``WORLD_SIZE`` > 1) the processes share out the videos of every run
    (:func:`vipmt.evaluation.evaluate_split`; gloo on CPU, NCCL with one GPU per process) and rank
    0 writes the JSON and the log; the aggregate records ``world_size``.
    """
    env_rank()                        # a broken torchrun environment: one error before anything is written
    cfg = resolve_config({}, values)                                  # the one resolution
    require_dataset(cfg)                                              # before loading any weights
    path = checkpoint_to_test(cfg, checkpoint)
    if path.lower() != UNTRAINED and not os.path.exists(path):       # a directory: load_checkpoint names it as one
        hint = (f"train first (python train.py --group {cfg.group}) or pass --checkpoint PATH"
                if checkpoint is None else "check the path")
        raise UserError(f"checkpoint {path!r} does not exist; {hint}")
    given = output is not None
    output = output or results_path(cfg, checkpoint)
    check_output_locations(output=output, save_vis=save_vis, given=given)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with results_lock(output):                                        # rank 0, before the process group
        dist_info = init_distributed(resolve_device(cfg.device).type)    # fewer GPUs than processes: UserError
        try:
            setup_logging(os.path.splitext(output)[0] + ".log", rank=dist_info.rank)
            loaded = model_under_test(cfg, path, size_given="image_size" in values, trusted=trusted)
            return _test(cfg, loaded, output=output, save_vis=save_vis, dist_info=dist_info)
        finally:
            if dist_info.distributed:
                cleanup_distributed()


def _test(cfg, loaded: LoadedModel, *, output: str, save_vis: Optional[str], dist_info) -> Dict[str, Any]:
    device = resolve_device(cfg.device, dist_info.local_rank)
    segmenter = make_segmenter(loaded.model.to(device).eval(), cfg)
    engine = engine_settings(segmenter)
    processes = f", {dist_info.world_size} processes ({dist_info.backend})" if dist_info.distributed else ""
    logger.info("testing %s on %s group %d (%d run(s)), device %s%s, %d video(s) per pass; engine %s",
                loaded.description, cfg.dataset, cfg.group, cfg.test_runs, device, processes, cfg.test_video_batch,
                ", ".join(f"{k} {v}" for k, v in engine.items()))
    metric_keys = metric_names(cfg)
    runs = []
    started = time.time()
    for r in range(cfg.test_runs):
        runs.append(evaluate_split(cfg, segmenter, device=device, seed=cfg.seed + r,
                                   vis_dir=save_vis if r == 0 else None))
        m = runs[-1]["mean"]
        logger.info("run %d/%d (seed %d): %s", r + 1, cfg.test_runs, cfg.seed + r,
                    ", ".join(f"{k} {m[k]:.4f}" if m[k] is not None else f"{k} n/a" for k in metric_keys))
    if cfg.test_compile:
        logger.info("torch.compile spent %.1f s compiling (included in the test's time)", compile_seconds())
    agg = dict(aggregate(runs, metric_keys), world_size=dist_info.world_size)
    names = runs[0]["class_names"]
    table = format_table(agg, names, metric_keys)
    results = {"checkpoint": loaded.description, "dataset": cfg.dataset, "group": cfg.group,
               "metrics": metric_keys, "class_names": names, "aggregate": agg, "runs": runs,
               "config": config_to_dict(cfg), "engine": engine, "seconds": round(time.time() - started, 1)}
    if dist_info.is_main:
        write_results(output, results, table)
        logger.info("metrics table:\n%s", table)
        logger.info("results written to %s%s", output, f"; overlays in {save_vis}" if save_vis else "")
    return dict(results, table=table, output=output)
