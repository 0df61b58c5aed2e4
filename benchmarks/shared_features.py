"""What test.py saves by sharing a video's backbone features across the held-out classes it is tested for.

    python benchmarks/shared_features.py --root data/Youtube-VOS                 # folds 1..4: counts only
    python benchmarks/shared_features.py --root /tmp/syn --time --group 1 --size 120 216
    python benchmarks/shared_features.py --dataset minivspw --root data/VSPW_480p

Counts, per fold of the test split (``vipmt.evaluation.sharing_plan``, from the annotation file, no
frame read): the queries (class, video), those whose video is tested for another held-out class
too, their query frames, and the query frames the backbone encodes when each clip several classes
of a video hold is encoded once. The backbone also encodes each query's supports (not shared);
"backbone frames" adds them. ``--time`` runs the fold's test (``evaluate_split``, an untrained
model, one thread) with sharing and one query at a time, ``--rounds`` times in ABBA order, and
reports the process's CPU seconds and the wall clock of each, the frames through
``VIPMT.extract_features`` and whether the results are equal. Prints markdown and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import DEFAULTS  # noqa: E402
from config.config import DATASET_ROOT_KEYS  # noqa: E402
from models.vipmt import VIPMT  # noqa: E402
from vipmt import evaluation  # noqa: E402
from vipmt.build import build_split  # noqa: E402
from vipmt.cli import resolve_config  # noqa: E402
from vipmt.segmenter import make_segmenter  # noqa: E402


def fold_plan(cfg) -> dict:
    dataset = build_split(cfg, "test", episodes_per_class=1, seed=cfg.seed, augment=False)
    plan = evaluation.sharing_plan(dataset, evaluation.query_video_groups(dataset, range(len(dataset))),
                                   cfg.clip_length)
    supports = plan["queries"] * cfg.support_shots
    return dict(plan, backbone_frames=plan["query_frames"] + supports,
                backbone_frames_shared=plan["encoded_frames"] + supports)


def timed_test(cfg, segmenter, share: bool) -> tuple:
    """(CPU s, wall s, frames through extract_features, results) of one evaluate_split."""
    frames = [0]
    extract = VIPMT.extract_features

    def counted(model, images):
        frames[0] += images.shape[0] * images.shape[1]
        return extract(model, images)

    patches = [mock.patch.object(VIPMT, "extract_features", counted)]
    if not share:
        patches.append(mock.patch.object(evaluation, "shares_features", lambda segmenter, video_batch: False))
    for patch in patches:
        patch.start()
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        result = evaluation.evaluate_split(cfg, segmenter, device=torch.device("cpu"), seed=cfg.seed)
        return time.process_time() - cpu, time.perf_counter() - wall, frames[0], result
    finally:
        for patch in patches:
            patch.stop()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the dataset's root (YouTube-VIS 2019: train/train.json, ...)")
    parser.add_argument("--dataset", choices=sorted(DATASET_ROOT_KEYS), default="youtube_vis")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--time", action="store_true", help="also time --group's test with and without sharing")
    parser.add_argument("--group", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=[120, 216], help="model input for --time (H W)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = {"dataset": args.dataset, DATASET_ROOT_KEYS[args.dataset]: args.root, "num_workers": 0}
    report = {"clip_length": DEFAULTS.clip_length, "support_shots": DEFAULTS.support_shots, "folds": {}}
    print("| fold | queries | sharing a video | videos | query frames | encoded (shared) | saved | "
          "backbone frames (one at a time / shared) | saved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for group in args.groups:
        plan = fold_plan(resolve_config({}, dict(base, group=group)))
        report["folds"][group] = plan
        saved = plan["query_frames"] - plan["encoded_frames"]
        print(f"| {group} | {plan['queries']} | {plan['shared_queries']} | {plan['videos']} | {plan['query_frames']} | "
              f"{plan['encoded_frames']} | {saved} ({100 * saved / plan['query_frames']:.1f} %) | "
              f"{plan['backbone_frames']} / {plan['backbone_frames_shared']} | "
              f"{100 * saved / plan['backbone_frames']:.1f} % |")
    if args.time:
        cfg = resolve_config({}, dict(base, group=args.group, image_size=list(args.size)))
        torch.manual_seed(0)
        segmenter = make_segmenter(VIPMT(backbone_weights=None, image_size=tuple(args.size)).eval(), cfg)
        rounds = {"shared": [], "one at a time": []}
        results = {}
        for round_number in range(args.rounds):          # ABBA: neither path always runs first
            for mode in list(rounds)[::1 if round_number % 2 == 0 else -1]:
                cpu, wall, frames, results[mode] = timed_test(cfg, segmenter, share=mode == "shared")
                rounds[mode].append({"cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "backbone_frames": frames})
        equal = results["shared"] == results["one at a time"]
        print(f"\nfold {args.group}, {args.size[0]}x{args.size[1]}, {args.threads} thread(s), "
              f"load average {os.getloadavg()[0]:.1f}; results equal: {equal}\n")
        print("| path | CPU s (rounds) | wall s (rounds) | backbone frames |")
        print("|---|---|---|---|")
        for mode, runs in rounds.items():
            print(f"| {mode} | {', '.join(str(r['cpu_s']) for r in runs)} | "
                  f"{', '.join(str(r['wall_s']) for r in runs)} | {runs[0]['backbone_frames']} |")
        report["time"] = {"group": args.group, "size": args.size, "threads": args.threads, "rounds": rounds,
                          "results_equal": equal, "load_average": os.getloadavg()[0]}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
