"""The test protocol over a fold's held-out classes, reusable by test.py, demo.py and others.

Every video of each test class is a query once (all frames where the class is present); its
support images come from other videos of the class. A segmenter (``models.VideoSegmenter``, or
anything with the same ``segment`` method) segments it; :func:`evaluate_split` gathers J, F,
class IoU and VC_n per video and class for one seed, :func:`aggregate` takes mean and std over
runs with several seeds, :func:`format_table` prints them. test.py's whole run (a checkpoint
loaded, tested, the results JSON written) is :func:`vipmt.testrun.run_test`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from utils.distributed import all_gather_object, get_rank, get_world_size
from utils.metrics import FewShotEvaluator, jaccard
from utils.runtime import seed_everything
from utils.visualize import save_video_visualisation

from .build import build_split, resolve_num_workers

__all__ = ["METRICS", "metric_names", "AllBackground", "memory_generator", "evaluate_split", "mean_and_std",
           "aggregate", "format_table"]

METRICS = ("J", "F", "class_iou")        # + VC_<window>


def metric_names(cfg) -> List[str]:
    return list(METRICS) + [f"VC_{cfg.vc_window}"]


class AllBackground:
    """A baseline segmenter that predicts no object anywhere (score 0 on every frame)."""

    def segment(self, query_img: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None):
        """query_img [T,3,H,W] -> VideoPrediction(pred [T,H,W] zeros, score [T] zeros)."""
        from models import VideoPrediction  # noqa: WPS433

        frames, _, height, width = query_img.shape
        return VideoPrediction(pred=torch.zeros(frames, height, width, dtype=torch.int64),
                               score=torch.zeros(frames))


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


def mean_and_std(values: List[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and population std of ``values``, None and nan left out (both None when nothing is left)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals))}


def aggregate(runs: List[Dict[str, Any]], metric_keys: Sequence[str]) -> Dict[str, Any]:
    """Mean and (population) std over runs of every per-class and mean metric."""
    classes = list(runs[0]["per_class"])
    per_class = {c: {k: mean_and_std([r["per_class"][c].get(k) for r in runs]) for k in metric_keys} for c in classes}
    mean = {k: mean_and_std([r["mean"].get(k) for r in runs]) for k in metric_keys}
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
