"""The test protocol over a fold's held-out classes, reusable by test.py, demo.py and others.

Every video of each test class is a query once (all frames where the class is present); its
support images come from other videos of the class. A segmenter (``models.VideoSegmenter``, or
anything with the same ``segment`` method) segments it; :func:`evaluate_split` gathers J, F,
class IoU and VC_n per video and class for one seed (the queries of a video tested for several
classes together, sharing its backbone features), :func:`aggregate` takes mean and std over
runs with several seeds, :func:`format_table` prints them. test.py's whole run (a checkpoint
loaded, tested, the results JSON written) is :func:`vipmt.testrun.run_test`.
"""
from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "metric_names", "AllBackground", "memory_generator", "shares_features", "query_video_groups",
           "sharing_plan", "evaluate_split", "mean_and_std", "aggregate", "format_table"]

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


def shares_features(segmenter, video_batch: int) -> bool:
    """Whether the protocol segments the queries of one video together, one backbone pass per clip
    they share (``VideoSegmenter.segment_shared``): one video per pass (``test_video_batch=1``) and a
    segmenter that can. ``test_video_batch`` > 1 stacks videos instead (``segment_many``)."""
    return video_batch == 1 and hasattr(segmenter, "segment_shared")


def query_video_groups(dataset, indices: Sequence[int]) -> List[List[int]]:
    """The test items of ``indices`` grouped by query video (a video tested for several classes is
    one group, its items in dataset order), the groups in the order of their first item."""
    groups: Dict[str, List[int]] = {}
    for index in indices:
        groups.setdefault(dataset.test_item(index)[1], []).append(index)
    return list(groups.values())


def query_frame_ids(dataset, index: int) -> List[str]:
    """The names of test item ``index``'s query frames (its ``frame_names``), read without loading it."""
    class_id, video = dataset.test_item(index)
    return [dataset.frame_name(video, frame) for frame in dataset.query_frames_of(video, class_id)]


def sharing_plan(dataset, groups: Sequence[Sequence[int]], clip_length: int) -> Dict[str, int]:
    """What sharing saves on ``groups`` (:func:`query_video_groups`): ``queries``, ``shared_queries``
    (those whose video is tested for another class too), ``videos``, ``query_frames`` (the frames
    of every query) and ``encoded_frames`` (the query frames through the backbone when every clip
    held by several queries of a video, the same frame names, is encoded once).

    Counted from frame names, as ``segment_shared`` matches clips; it also compares their pixels,
    which agree whenever the frames of a video have one size (YouTube-VIS; MiniVSPW tests every
    class on the same frame list)."""
    from models.engine import clip_keys  # noqa: WPS433

    plan = {"queries": 0, "shared_queries": 0, "videos": len(groups), "query_frames": 0, "encoded_frames": 0}
    for group in groups:
        seen = set()
        for index in group:
            ids = query_frame_ids(dataset, index)
            keys = clip_keys(ids, len(ids), clip_length)
            plan["query_frames"] += len(ids)
            plan["encoded_frames"] += sum(len(key) for key in set(keys) - seen)
            seen.update(keys)
        plan["queries"] += len(group)
        plan["shared_queries"] += len(group) if len(group) > 1 else 0
    return plan


def _segment_shared(segmenter, groups: Sequence[Sequence[int]], items, *, device: torch.device, seed: int):
    """(index, item, VideoPrediction) for every (index, item) of ``items`` (those of ``groups``, in
    their order), the queries of one video together (``VideoSegmenter.segment_shared``), each with
    its own supports and memory generator, as one at a time."""
    from models import QueryVideo  # noqa: WPS433

    items = iter(items)
    for group in groups:
        members = [next(items) for _ in group]
        videos = [QueryVideo(item["query_img"].to(device), item["support_img"].to(device),
                             item["support_mask"].to(device), generator=memory_generator(seed, index),
                             frame_ids=item["frame_names"]) for index, item in members]
        for (index, item), result in zip(members, segmenter.segment_shared(videos)):
            yield index, item, result


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
    run side by side per forward pass. With one video per pass, a video tested for several
    classes is segmented for all of them together (:func:`shares_features`): each clip they share
    goes through the backbone once, the results are those of one query at a time, and under
    torchrun such a video's queries go to one process.
    """
    dataset = build_split(cfg, "test", episodes_per_class=1, seed=seed, augment=False)
    seed_everything(seed)
    rank, world_size = get_rank(), get_world_size()
    evaluator = FewShotEvaluator(vc_window=cfg.vc_window)
    share = shares_features(segmenter, cfg.test_video_batch)
    if share:                                   # a video's classes together, in one process
        groups = query_video_groups(dataset, range(len(dataset)))
        if rank == 0:
            _log_sharing(sharing_plan(dataset, groups, segmenter.clip_length))
        groups = groups[rank::world_size]
        mine = [index for group in groups for index in group]
    else:
        mine = list(range(rank, len(dataset), world_size))
    loader = DataLoader(Subset(dataset, mine), batch_size=None, num_workers=resolve_num_workers(cfg.num_workers))
    if share:
        results = _segment_shared(segmenter, groups, zip(mine, loader), device=device, seed=seed)
    else:
        results = _segment_videos(segmenter, zip(mine, loader), device=device, seed=seed,
                                  video_batch=cfg.test_video_batch)
    segmented = []
    progress = tqdm(total=len(mine), desc=f"test seed {seed}", dynamic_ncols=True, disable=rank != 0)
    for index, item, result in results:
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


def _log_sharing(plan: Mapping[str, int]) -> None:
    if plan["shared_queries"] and plan["encoded_frames"] == plan["query_frames"]:
        logger.info("%d of the %d queries share their video with another class, but no clip of the same frames: "
                    "the backbone encodes all %d query frames", plan["shared_queries"], plan["queries"],
                    plan["query_frames"])
    elif plan["shared_queries"]:
        logger.info("%d of the %d queries share their video with another class: the backbone encodes %d query "
                    "frames instead of %d (clips they share once)", plan["shared_queries"], plan["queries"],
                    plan["encoded_frames"], plan["query_frames"])


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
