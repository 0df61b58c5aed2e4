"""The test protocol over a fold's held-out classes, reusable by test.py, demo.py and others.

Every video of each test class is a query once (all frames where the class is present); its
support images come from other videos of the class. A segmenter (``models.VideoSegmenter``, or
anything with the same ``segment`` method) segments it; :func:`evaluate_split` gathers J, F,
class IoU and VC_n per video and class for one seed, :func:`aggregate` takes mean and std over
runs with several seeds, :func:`format_table` prints them, :func:`run_test` does all of it for a
checkpoint and writes the results JSON.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from config import DEFAULTS, config_to_dict
from utils.distributed import all_gather_object, cleanup_distributed, env_rank, get_rank, get_world_size, init_distributed
from utils.fileio import WriteError, atomic_write_json, unwritable_reason
from utils.log import setup_logging
from utils.metrics import FewShotEvaluator, jaccard
from utils.runlock import RunLock
from utils.runtime import UserError, log_bf16_advice, resolve_device, seed_everything
from utils.visualize import save_video_visualisation

from .build import (BEST_CHECKPOINT, CONFIG_FILE, TrainingData, amp_autocast, backbone_weights_path, build_model,
                    build_split, require_dataset, resolve_num_workers, run_directory)
from .cli import resolve_config
from .loading import LoadedModel, load_trained_model

__all__ = ["METRICS", "RESULTS_FOLDER", "metric_names", "results_path", "check_output_locations", "make_segmenter",
           "COMPILED_MODULES", "check_compiler", "compile_model", "compile_seconds", "AllBackground", "model_under_test",
           "memory_generator", "evaluate_split", "aggregate", "format_table", "results_lock", "write_results", "run_test",
           "validate_episodes",
           "checkpoint_to_test"]

logger = logging.getLogger(__name__)

METRICS = ("J", "F", "class_iou")        # + VC_<window>
RESULTS_FOLDER = "test"                   # test.py writes <run dir>/test/test_<checkpoint>_<seeds>.{json,log}
VAL_MEMORY_SEED_OFFSET = 7919             # validation memory draws use their own fixed generator


def metric_names(cfg) -> List[str]:
    return list(METRICS) + [f"VC_{cfg.vc_window}"]


# The modules test_compile compiles: the backbone and the two heaviest heads. The small
# nn.Sequential heads are left out: they share one forward code object, so dynamo would recompile
# it for each of them and soon hit its recompile limit. The named steps around them
# (prototypes, similarity, memory) stay eager: their shapes change with the memory size and
# the object's area.
COMPILED_MODULES = ("backbone", "transformer", "score_head")


def check_compiler() -> None:
    """UserError unless torch.compile (inductor) can build a kernel here (it compiles lazily, on the
    first video, so without this check a missing C++ compiler would only surface mid-test)."""
    try:
        torch.compile(lambda x: x.relu() + 1, backend="inductor")(torch.ones(2))
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"test_compile=true, but torch.compile (inductor) does not work here: "
                        f"{type(exc).__name__}: {first_line}. Set test_compile=false") from None


def compile_model(model) -> None:
    """Compile the forward of each of :data:`COMPILED_MODULES` in place with inductor.

    Only ``forward`` is replaced (not ``__call__``), so parameter names, state dicts and
    forward hooks stay as they are and hooks run eagerly.
    """
    for name in COMPILED_MODULES:
        module = getattr(model, name)
        module.forward = torch.compile(module.forward, backend="inductor")


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process (dynamo's own record; 0 if none)."""
    from torch._dynamo import utils as dynamo_utils  # noqa: WPS433 - private, hence the fallback

    return float(sum(getattr(dynamo_utils, "compilation_time_metrics", {}).get("_compile.compile_inner", [])))


def make_segmenter(model, cfg):
    """The video engine with the configured clip length, reliable memory and precision.

    ``test_compile`` compiles the model's backbone and heads in place (:func:`compile_model`).
    """
    from models import VideoSegmenter  # noqa: WPS433

    if cfg.test_compile:
        check_compiler()
        compile_model(model)
        logger.info("torch.compile (inductor): backbone and heads compile on their first clips of each shape")
    log_bf16_advice(next(model.parameters()).device, cfg.test_bf16)    # a CPU with native bf16: a hint
    return VideoSegmenter(model, clip_length=cfg.clip_length, memory_threshold=cfg.memory_threshold,
                          memory_size=cfg.memory_size, autocast_dtype=torch.bfloat16 if cfg.test_bf16 else None)


class AllBackground:
    """A baseline segmenter that predicts no object anywhere (score 0 on every frame)."""

    def segment(self, query_img: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None):
        """query_img [T,3,H,W] -> VideoPrediction(pred [T,H,W] zeros, score [T] zeros)."""
        from models import VideoPrediction  # noqa: WPS433

        frames, _, height, width = query_img.shape
        return VideoPrediction(pred=torch.zeros(frames, height, width, dtype=torch.int64),
                               score=torch.zeros(frames))


def checkpoint_to_test(cfg, checkpoint: Optional[str]) -> str:
    """``--checkpoint`` as given, else the run's ``best.pth`` (``<output_dir>/<run_name>/best.pth``)."""
    return checkpoint or os.path.join(run_directory(cfg), BEST_CHECKPOINT)


def model_under_test(values: Mapping[str, Any], *, checkpoint: Optional[str], trusted: bool = False):
    """(config, LoadedModel) for ``checkpoint``: a path, None (the run's best.pth) or 'none' (untrained).

    The model's image size is the checkpoint's unless ``values`` sets image_size.
    """
    cfg = resolve_config({}, values)
    path = checkpoint_to_test(cfg, checkpoint)
    if path.lower() == "none":
        logger.warning("testing an UNTRAINED model (--checkpoint none)")
        seed_everything(cfg.seed)                 # the same initial weights as train.py's
        model = build_model(cfg, backbone_weights=backbone_weights_path(cfg, required=True))
        return cfg, LoadedModel(model=model.eval(), config=None, description="none (untrained)")
    if not os.path.exists(path):                  # a directory: load_checkpoint names it as one
        hint = (f"train first (python train.py --group {cfg.group}) or pass --checkpoint PATH"
                if checkpoint is None else "check the path")
        raise UserError(f"checkpoint {path!r} does not exist; {hint}")
    loaded = load_trained_model(path, image_size=values.get("image_size"), trusted=trusted)
    if "image_size" not in values:                # the size the model was trained for
        cfg = resolve_config({}, dict(values, image_size=list(loaded.model.image_size)))
    warn_if_shots_differ(loaded.config, cfg.support_shots)
    return cfg, loaded


def warn_if_shots_differ(trained_config: Optional[Mapping[str, Any]], test_shots: int) -> None:
    """A warning when the model is tested with another number of annotated supports than it was
    trained with (an authors' checkpoint, without a config, was trained with 5)."""
    trained = (trained_config or {}).get("support_shots", DEFAULTS.support_shots)
    if trained != test_shots:
        logger.warning("the model was trained with %d annotated support(s) per episode and is tested with %d: "
                       "a distribution shift (the support branch sees fewer/more frames than in training); "
                       "for a %d-shot protocol train with support_shots=%d", trained, test_shots, test_shots,
                       test_shots)


def class_name_of(dataset, class_id: int) -> str:
    fn = getattr(dataset, "class_name", None)
    if callable(fn):
        try:
            return str(fn(class_id))
        except Exception:  # noqa: BLE001 - a name is a nicety
            pass
    names = getattr(getattr(dataset, "index", None), "category_names", None)
    if isinstance(names, dict) and class_id in names:
        return str(names[class_id])
    return str(class_id)


def memory_generator(seed: int, index: int) -> torch.Generator:
    """The generator of test video ``index``'s memory draws in the run with ``seed``.

    A pure function of (seed, index), as the video's supports are (``dataset.episodes.item_rng``),
    so a video draws the same memory frames whichever process segments it and whichever videos
    run beside it (``test_video_batch``).
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def _segment_videos(segmenter, items, *, device: torch.device, seed: int, video_batch: int):
    """(index, item, VideoPrediction) for every (index, item) of ``items``, ``video_batch`` videos per
    pass when the segmenter can (``VideoSegmenter.segment_many``), in the order they finish."""
    if video_batch == 1 or not hasattr(segmenter, "segment_many"):
        for index, item in items:
            yield index, item, segmenter.segment(item["query_img"].to(device), item["support_img"].to(device),
                                                 item["support_mask"].to(device),
                                                 generator=memory_generator(seed, index))
        return
    from models import QueryVideo  # noqa: WPS433

    videos = (QueryVideo(item["query_img"].to(device), item["support_img"].to(device), item["support_mask"].to(device),
                         generator=memory_generator(seed, index), tag=(index, item)) for index, item in items)
    for (index, item), result in segmenter.segment_many(videos, video_batch):
        yield index, item, result


@torch.no_grad()
def evaluate_split(cfg, segmenter, *, device: torch.device, seed: int, vis_dir: Optional[str] = None) -> Dict[str, Any]:
    """One pass over every test video with supports drawn with ``seed``; returns the run's summary.

    The summary holds ``seed``, ``class_names``, ``videos`` (per-video metrics, in dataset order,
    each with the ``rank`` of the process that segmented it) and the evaluator's ``per_class`` /
    ``mean`` metrics (fractions in [0, 1]). Under torchrun each process segments every
    world_size-th video and the per-video values are gathered and added in dataset order, so
    every process returns the numbers of a single-process run. ``cfg.test_video_batch`` videos
    run side by side per forward pass.
    """
    dataset = build_split(cfg, "test", episodes_per_class=1, seed=seed, augment=False)
    seed_everything(seed)
    rank, world_size = get_rank(), get_world_size()
    evaluator = FewShotEvaluator(vc_window=cfg.vc_window)
    mine = list(range(rank, len(dataset), world_size))
    loader = DataLoader(Subset(dataset, mine), batch_size=None, num_workers=resolve_num_workers(cfg.num_workers))
    segmented = []
    progress = tqdm(total=len(mine), desc=f"test seed {seed}", dynamic_ncols=True, disable=rank != 0)
    for index, item, result in _segment_videos(segmenter, zip(mine, loader), device=device, seed=seed,
                                               video_batch=cfg.test_video_batch):
        class_id = int(item["class_id"])
        pred = result.pred.cpu()
        gt = item["query_mask"][:, 0]
        segmented.append({"index": index, "class_id": class_id, "video": item["video"], "rank": rank,
                          "metrics": evaluator.video_metrics(pred, gt)})
        if vis_dir:
            save_video_visualisation(vis_dir, class_name_of(dataset, class_id), item["video"], item["query_img"], gt,
                                     pred, frame_names=item.get("frame_names"),
                                     frame_scores=result.score.cpu().tolist(), frame_j=jaccard(pred, gt).tolist())
        progress.update()
    progress.close()
    gathered = sorted((entry for part in all_gather_object(segmented) for entry in part), key=lambda e: e["index"])
    names: Dict[str, str] = {}
    videos: List[Dict[str, Any]] = []
    for entry in gathered:                                      # dataset order: the sums of one process
        class_id = entry["class_id"]
        per_video = evaluator.add_metrics(class_id, entry["metrics"])
        names[str(class_id)] = class_name_of(dataset, class_id)
        videos.append({"class_id": class_id, "video": entry["video"], **per_video, "rank": entry["rank"]})
    summary = evaluator.summary()
    summary["per_class"] = {str(k): v for k, v in summary["per_class"].items()}
    return {"seed": seed, "class_names": names, "videos": videos, **summary}


@torch.no_grad()
def validate_episodes(model, data: TrainingData, cfg, *, device: torch.device, dist_info, amp: bool) -> Dict[str, Any]:
    """Training's validation: the val split's episodes with the three-clip scheme of training in eval
    mode (memory = ground-truth masks of earlier frames), this rank's share, merged over ranks.

    Returns ``{"class_iou": {class: IoU}, "mean_class_iou": float}``; the same episodes and memory
    draws at every validation (val epoch 0, a generator seeded with seed + VAL_MEMORY_SEED_OFFSET).
    """
    from models.episode import plan_episode, predict_episode  # noqa: WPS433
    from utils import distributed as du  # noqa: WPS433

    model.eval()
    data.val_set.set_epoch(0)
    generator = torch.Generator().manual_seed(cfg.seed + VAL_MEMORY_SEED_OFFSET)
    evaluator = FewShotEvaluator(boundary=False, consistency=False)
    loader = data.val_loader(dist_info.rank, dist_info.world_size)
    for batch in tqdm(loader, desc="validate", leave=False, disable=not dist_info.is_main, dynamic_ncols=True):
        tensors = [batch[k].to(device) for k in ("query_img", "query_mask", "support_img", "support_mask")]
        plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, generator)
        with amp_autocast(device, amp):
            pred, _score = predict_episode(model, *tensors, plans)
        gt = tensors[1][:, :, 0]
        for b, class_id in enumerate(batch["class_id"]):
            evaluator.add_video(class_id, pred[b].cpu(), gt[b].cpu())
    merged = FewShotEvaluator(boundary=False, consistency=False)
    for part in du.all_gather_object(evaluator):       # every rank gets every rank's counts
        merged.merge(part)
    return {"class_iou": merged.class_iou(), "mean_class_iou": merged.mean_class_iou()}


def _stats(values: List[Optional[float]]) -> Dict[str, Optional[float]]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals))}


def aggregate(runs: List[Dict[str, Any]], metric_keys: Sequence[str]) -> Dict[str, Any]:
    """Mean and (population) std over runs of every per-class and mean metric."""
    classes = list(runs[0]["per_class"])
    per_class = {c: {k: _stats([r["per_class"][c].get(k) for r in runs]) for k in metric_keys} for c in classes}
    mean = {k: _stats([r["mean"].get(k) for r in runs]) for k in metric_keys}
    return {"per_class": per_class, "mean": mean, "runs": len(runs), "seeds": [r["seed"] for r in runs]}


def format_table(agg: Dict[str, Any], names: Mapping[str, str], metric_keys: Sequence[str]) -> str:
    """The per-class and mean metrics of :func:`aggregate` as a text table, in %."""
    runs = agg["runs"]

    def cell(stat):
        if stat["mean"] is None:
            return "n/a"
        return f"{100 * stat['mean']:.1f}" + (f" ± {100 * stat['std']:.1f}" if runs > 1 else "")

    headers = ["class"] + [k if k != "class_iou" else "class IoU" for k in metric_keys]
    rows = [[f"{c} {names.get(c, '')}".strip()] + [cell(agg["per_class"][c][k]) for k in metric_keys]
            for c in agg["per_class"]]
    rows.append(["mean"] + [cell(agg["mean"][k]) for k in metric_keys])
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]

    def line(row):
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    sep = "-" * len(line(headers))
    title = f"metrics in % ({'mean ± std over ' + str(runs) + ' runs' if runs > 1 else '1 run'})"
    return "\n".join([title, line(headers), sep, *(line(r) for r in rows[:-1]), sep, line(rows[-1])])


def results_path(cfg, checkpoint: Optional[str]) -> str:
    """Where test.py writes its JSON by default (the log goes beside it, ``.log``).

    ``<run dir>/test/test_<checkpoint name>_seed<S>.json`` (``_seeds<S>-<E>`` for several runs), so
    results of different checkpoints and seeds never overwrite each other. The run directory is
    the checkpoint's own folder when it is one of ours (``config.yaml`` beside it), otherwise
    ``<output_dir>/<run_name>`` of the config (an authors' file, or ``--checkpoint none``).
    """
    path = checkpoint_to_test(cfg, checkpoint)
    if path.lower() == "none":
        name, folder = "untrained", run_directory(cfg)
    else:
        name = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            folder = run_directory(cfg)
    last_seed = cfg.seed + cfg.test_runs - 1
    seeds = f"seed{cfg.seed}" if cfg.test_runs == 1 else f"seeds{cfg.seed}-{last_seed}"
    return os.path.join(folder, RESULTS_FOLDER, f"test_{name}_{seeds}.json")


def check_output_locations(*, output: str, save_vis: Optional[str]) -> None:
    """Refuse, before any model is loaded, outputs that cannot be written (UserError naming the path)."""
    if os.path.isdir(output):
        raise UserError(f"--output {output!r} is a directory; expected the path of the results JSON file")
    reason = unwritable_reason(os.path.dirname(os.path.abspath(output)))
    if reason:
        raise UserError(f"cannot write the results file {output!r}: {reason}")
    if save_vis:
        if os.path.exists(save_vis) and not os.path.isdir(save_vis):
            raise UserError(f"--save-vis {save_vis!r} is a file; expected a folder for the overlays")
        reason = unwritable_reason(save_vis)
        if reason:
            raise UserError(f"cannot write the overlays to {save_vis!r}: {reason}")


def run_test(values: Mapping[str, Any], *, checkpoint: Optional[str] = None, output: Optional[str] = None,
             save_vis: Optional[str] = None, trusted: bool = False) -> Dict[str, Any]:
    """test.py's whole job: load, run ``test_runs`` seeds, aggregate, write the JSON and a log; returns the results.

    ``values`` are explicit config values (see vipmt.cli); ``checkpoint`` as in
    :func:`model_under_test`; ``output`` defaults to :func:`results_path` (the log is written
    beside it, same name, ``.log``); ``save_vis`` writes overlays of the first run. Output
    locations are checked before the model is loaded, and the results file is locked
    (:func:`results_lock`) while the test runs. The results hold ``table`` (the text table). When
    the JSON cannot be written, :func:`write_results` keeps it in a fallback file it names.

    Under torchrun (``WORLD_SIZE`` > 1) the processes share out the videos of every run
    (:func:`evaluate_split`; gloo on CPU, NCCL with one GPU per process) and rank 0 writes the
    JSON and the log; the aggregate records ``world_size``.
    """
    early = resolve_config({}, values)
    require_dataset(early)                                            # before loading any weights
    output = output or results_path(early, checkpoint)
    check_output_locations(output=output, save_vis=save_vis)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with results_lock(output):                                        # rank 0, before the process group
        dist_info = init_distributed(resolve_device(early.device).type)   # fewer GPUs than processes: UserError
        try:
            setup_logging(os.path.splitext(output)[0] + ".log", rank=dist_info.rank)
            return _run_test(values, checkpoint=checkpoint, output=output, save_vis=save_vis, trusted=trusted,
                             dist_info=dist_info)
        finally:
            if dist_info.distributed:
                cleanup_distributed()


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



def _run_test(values, *, checkpoint, output, save_vis, trusted, dist_info) -> Dict[str, Any]:
    cfg, loaded = model_under_test(values, checkpoint=checkpoint, trusted=trusted)
    device = resolve_device(cfg.device, dist_info.local_rank)
    segmenter = make_segmenter(loaded.model.to(device).eval(), cfg)
    processes = f", {dist_info.world_size} processes ({dist_info.backend})" if dist_info.distributed else ""
    logger.info("testing %s on %s group %d (%d run(s)), device %s%s, %d video(s) per pass", loaded.description,
                cfg.dataset, cfg.group, cfg.test_runs, device, processes, cfg.test_video_batch)
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
               "config": config_to_dict(cfg), "seconds": round(time.time() - started, 1)}
    if dist_info.is_main:
        write_results(output, results, table)
        logger.info("metrics table:\n%s", table)
        logger.info("results written to %s%s", output, f"; overlays in {save_vis}" if save_vis else "")
    return dict(results, table=table, output=output)
