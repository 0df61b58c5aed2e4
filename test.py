"""Evaluate VIPMT on a fold's held-out classes (SPEC.md section 8).

    python test.py --group 1                                   # runs/<dataset>_group1/best.pth
    python test.py --group 1 --checkpoint path/to/authors.pth  # ours or the authors' format
    python test.py --group 1 --runs 5 --save-vis outputs/vis   # mean ± std over 5 seeds, overlays

Every video of each test class is a query once (all frames where the class is present); its
5 support images come from other videos of the class. The video is segmented clip by clip
(``clip_length`` frames): clip 1 against the supports, later clips against the supports plus
up to ``memory_size`` earlier frames whose predicted score is ``>= memory_threshold``, with
their predicted masks (``models.VideoSegmenter``). Prints per-class and mean J, F, class IoU
and VC_7 and writes them to JSON. ``--runs N`` repeats with seeds seed..seed+N-1 (support
sampling makes single runs noisy) and reports mean ± std.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import ConfigError, config_to_dict, dataset_root
from train import (BEST_CHECKPOINT, CHECKPOINT_HINT, add_common_arguments, backbone_weights_path, build_model,
                   build_split, dataset_missing_message, explicit_values, resolve_config, run_directory)
from utils.checkpoint import CheckpointError, is_our_checkpoint, load_checkpoint, load_model_state
from utils.fileio import atomic_write_json
from utils.log import setup_logging
from utils.metrics import FewShotEvaluator, jaccard
from utils.runtime import UserError, resolve_device, reuse_freed_memory, run_cli, seed_everything
from utils.visualize import save_video_visualisation

logger = logging.getLogger("test")

METRICS = ("J", "F", "class_iou")        # + VC_<window>
DEFAULT_OUTPUT_DIR = "outputs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint to test: ours or the authors' {'state_dict': ...} file "
                             "(default <output_dir>/<run_name>/best.pth); 'none' tests the untrained "
                             "model (backbone from --backbone-weights)")
    parser.add_argument("--runs", type=int, help="repeat with seeds seed..seed+N-1 (config: test_runs)")
    parser.add_argument("--output", metavar="JSON", help="results file (default outputs/test_<dataset>_group<G>.json)")
    parser.add_argument("--save-vis", metavar="DIR", help="write per-frame overlays and per-video contact sheets (first run)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that hold arbitrary pickled objects (only for files you trust)")
    return parser


# ================================================================ model
def load_tested_model(args, values: Dict[str, Any]):
    """(config, model, checkpoint description) with the checkpoint's weights loaded."""
    cfg = resolve_config({}, values)
    path = args.checkpoint or os.path.join(run_directory(cfg), BEST_CHECKPOINT)
    if path.lower() == "none":
        logger.warning("testing an UNTRAINED model (--checkpoint none)")
        seed_everything(cfg.seed)                 # the same initial weights as train.py's
        model = build_model(cfg, backbone_weights_path(cfg, required=True))
        return cfg, model, "none (untrained)"
    if not os.path.isfile(path):
        hint = ("train first (python train.py --group {g}) or pass --checkpoint PATH".format(g=cfg.group)
                if args.checkpoint is None else "check the path")
        raise UserError(f"checkpoint {path!r} does not exist; {hint}")
    ckpt = load_checkpoint(path, trusted=args.trust_checkpoint)
    saved = ckpt.get("config") if is_our_checkpoint(ckpt) else None
    if saved and "image_size" not in values and saved.get("image_size"):
        values = dict(values, image_size=list(saved["image_size"]))   # the size the model was trained for
        cfg = resolve_config({}, values)
    model = build_model(cfg, None)                                    # the checkpoint holds the backbone
    load_model_state(model, ckpt["state_dict"], source=f"checkpoint {path!r}", hint=CHECKPOINT_HINT)
    kind = "ours" if is_our_checkpoint(ckpt) else "authors'/plain state dict"
    epoch = ckpt.get("epoch")
    return cfg, model, f"{path} ({kind}{'' if epoch is None else f', epoch {epoch}'})"


def make_segmenter(model, cfg):
    from models import VideoSegmenter  # noqa: WPS433

    return VideoSegmenter(model, clip_length=cfg.clip_length, memory_threshold=cfg.memory_threshold,
                          memory_size=cfg.memory_size, autocast_dtype=torch.bfloat16 if cfg.test_bf16 else None)


# ================================================================ evaluation
def class_name_of(dataset, class_id: int) -> str:
    for attr in ("class_name",):
        fn = getattr(dataset, attr, None)
        if callable(fn):
            try:
                return str(fn(class_id))
            except Exception:  # noqa: BLE001 - a name is a nicety
                break
    index = getattr(dataset, "index", None)
    names = getattr(index, "category_names", None)
    if isinstance(names, dict) and class_id in names:
        return str(names[class_id])
    return str(class_id)


@torch.no_grad()
def evaluate_run(cfg, segmenter, device: torch.device, seed: int, vis_dir: Optional[str]) -> Dict[str, Any]:
    """One pass over every test video with supports drawn with ``seed``; returns the summary."""
    dataset = build_split(cfg, "test", 1, seed, augment=False)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    evaluator = FewShotEvaluator(vc_window=cfg.vc_window)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers)
    names: Dict[str, str] = {}
    videos: List[Dict[str, Any]] = []
    for item in tqdm(loader, total=len(dataset), desc=f"test seed {seed}", dynamic_ncols=True):
        class_id = int(item["class_id"])
        result = segmenter.segment(item["query_img"].to(device), item["support_img"].to(device),
                                   item["support_mask"].to(device), generator=generator)
        pred = result.pred.cpu()
        gt = item["query_mask"][:, 0]
        per_video = evaluator.add_video(class_id, pred, gt)
        names[str(class_id)] = class_name_of(dataset, class_id)
        videos.append({"class_id": class_id, "video": item["video"], **per_video})
        if vis_dir:
            save_video_visualisation(vis_dir, names[str(class_id)], item["video"], item["query_img"], gt, pred,
                                     frame_names=item.get("frame_names"), frame_scores=result.score.cpu().tolist(),
                                     frame_j=jaccard(pred, gt).tolist())
    summary = evaluator.summary()
    summary["per_class"] = {str(k): v for k, v in summary["per_class"].items()}
    return {"seed": seed, "class_names": names, "videos": videos, **summary}


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


def format_table(agg: Dict[str, Any], names: Dict[str, str], metric_keys: Sequence[str], runs: int) -> str:
    def cell(stat):
        if stat["mean"] is None:
            return "n/a"
        return f"{100 * stat['mean']:.1f}" + (f" ± {100 * stat['std']:.1f}" if runs > 1 else "")

    headers = ["class"] + [k if k != "class_iou" else "class IoU" for k in metric_keys]
    rows = [[f"{c} {names.get(c, '')}".strip()] + [cell(agg["per_class"][c][k]) for k in metric_keys]
            for c in agg["per_class"]]
    rows.append(["mean"] + [cell(agg["mean"][k]) for k in metric_keys])
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    sep = "-" * len(line(headers))
    body = [line(r) for r in rows[:-1]]
    title = f"metrics in % ({'mean ± std over ' + str(runs) + ' runs' if runs > 1 else '1 run'})"
    return "\n".join([title, line(headers), sep, *body, sep, line(rows[-1])])


# ================================================================ main
def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    values = explicit_values(args)
    if args.runs is not None:
        values["test_runs"] = args.runs
    early = resolve_config({}, values)
    if not os.path.exists(dataset_root(early)):                       # before loading any weights
        raise UserError(dataset_missing_message(early))
    cfg, model, description = load_tested_model(args, values)
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    segmenter = make_segmenter(model, cfg)
    output = args.output or os.path.join(DEFAULT_OUTPUT_DIR, f"test_{cfg.dataset}_group{cfg.group}.json")
    logger.info("testing %s on %s group %d (%d run(s)), device %s", description, cfg.dataset, cfg.group,
                cfg.test_runs, device)
    metric_keys = list(METRICS) + [f"VC_{cfg.vc_window}"]
    runs = []
    started = time.time()
    for r in range(cfg.test_runs):
        runs.append(evaluate_run(cfg, segmenter, device, cfg.seed + r, args.save_vis if r == 0 else None))
        m = runs[-1]["mean"]
        logger.info("run %d/%d (seed %d): %s", r + 1, cfg.test_runs, cfg.seed + r,
                    ", ".join(f"{k} {m[k]:.4f}" if m[k] is not None else f"{k} n/a" for k in metric_keys))
    agg = aggregate(runs, metric_keys)
    names = runs[0]["class_names"]
    table = format_table(agg, names, metric_keys, cfg.test_runs)
    print(table)
    results = {"checkpoint": description, "dataset": cfg.dataset, "group": cfg.group,
               "metrics": metric_keys, "class_names": names, "aggregate": agg, "runs": runs,
               "config": config_to_dict(cfg), "seconds": round(time.time() - started, 1)}
    atomic_write_json(output, results)
    logger.info("results written to %s%s", output, f"; overlays in {args.save_vis}" if args.save_vis else "")
    return 0


def user_error_types():
    from dataset import DatasetError  # noqa: WPS433
    from models import ModelError  # noqa: WPS433

    return (UserError, ConfigError, CheckpointError, DatasetError, ModelError)


if __name__ == "__main__":
    reuse_freed_memory()    # inference re-allocates large buffers every clip (utils/runtime.py)
    sys.exit(run_cli(main, None, user_error_types()))
