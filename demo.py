"""One-command demo of the main job on a synthetic dataset, on CPU, in a few minutes.

    python demo.py                 # everything goes to outputs/demo/
    python demo.py --out DIR       # elsewhere

1. writes a small synthetic YouTube-VIS 2019 dataset (``synthetic``: 16 categories;
   fold 1 trains on 12 of them and holds out 4),
2. trains VIPMT briefly (``vipmt.run``, what train.py runs) on CPU from a random backbone
   (no weight download): 64x64 frames, batches of 4 episodes of 3 one-frame clips (the
   three-clip protocol with feature reuse and a random memory frame), 120 steps,
3. tests the trained model (``last.pth``), the untrained model and the all-background baseline
   with test.py's protocol (``vipmt.testrun``) on the held-out classes (5-frame clips,
   reliable memory), prints the metrics table and a comparison, and writes per-frame overlays
   and contact sheets.

Numbers from a random backbone and two minutes of training are far below the paper's (which
uses ImageNet weights and 75k steps on a GPU); the demo shows that the whole pipeline runs and
learns. Re-running replaces the previous demo run (the dataset is reused).
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from synthetic import write_synthetic_youtube_vis
from utils.fileio import atomic_write_json
from utils.log import setup_logging
from vipmt.cli import resolve_config, run, script_parser
from vipmt.evaluation import AllBackground, evaluate_split
from vipmt.run import run_training
from vipmt.testrun import run_test

DATA = dict(seed=0, videos_per_class=5, frames_per_video=7, frame_size=(64, 112), num_categories=16)
SMALL = {"image_size": [64, 64], "num_workers": 0}
TRAIN = dict(SMALL, query_frames=3, clip_length=1, memory_size=1, batch_size=4, episodes_per_class=10, epochs=4,
             val_episodes_per_class=2, checkpoint_every_iters=0, save_every=1000)


def main(argv) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--out", default=os.path.join("outputs", "demo"), help="demo folder (default outputs/demo)")
    args = parser.parse_args(argv)
    started = time.time()

    data = os.path.join(args.out, "data")
    run_dir = os.path.join(args.out, "run")
    print(f"[1/4] synthetic dataset -> {data}", flush=True)
    write_synthetic_youtube_vis(data, **DATA)

    print("[2/4] training on CPU from a random backbone (a few minutes) ...", flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    common = {"youtube_vis_root": data, "device": "cpu", "backbone_weights": "none", "group": 1}
    status = run_training(dict(common, output_dir=args.out, run_name="run", **TRAIN), command=["demo.py"])
    if status != 0:
        return status

    setup_logging()                                   # the tests log to the console only
    print("[3/4] testing the untrained model ...", flush=True)
    untrained = run_test(dict(common, **SMALL), checkpoint="none", output=os.path.join(args.out, "untrained.json"))
    print(untrained["table"])

    print("[4/4] testing the trained model (last.pth) ...", flush=True)
    vis = os.path.join(args.out, "overlays")
    shutil.rmtree(vis, ignore_errors=True)
    trained = run_test(dict(common, **SMALL), checkpoint=os.path.join(run_dir, "last.pth"),
                       output=os.path.join(args.out, "results.json"), save_vis=vis)
    print(trained["table"])

    keys = trained["metrics"]
    background = evaluate_split(resolve_config({}, dict(common, **SMALL)), AllBackground(), device="cpu",
                                seed=trained["config"]["seed"])
    rows = {"trained (demo)": {k: trained["aggregate"]["mean"][k]["mean"] for k in keys},
            "untrained": {k: untrained["aggregate"]["mean"][k]["mean"] for k in keys},
            "all background": background["mean"]}
    print("\nheld-out classes of fold 1, mean over classes, in %:")
    print(f"{'model':<16}" + "".join(f"{k:>11}" for k in keys))
    for name, values in rows.items():
        print(f"{name:<16}" + "".join(f"{'n/a' if values.get(k) is None else f'{100 * values[k]:.1f}':>11}" for k in keys))
    summary = {"seconds": round(time.time() - started, 1), "models": rows, "results": trained["output"],
               "overlays": vis, "checkpoint": os.path.join(run_dir, "last.pth")}
    atomic_write_json(os.path.join(args.out, "summary.json"), summary)
    print(f"\ndone in {summary['seconds']:.0f} s: table and JSON in {trained['output']}, overlays in {vis}/, "
          f"summary in {os.path.join(args.out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
