"""Where test.py's time goes: wall-clock per stage of its own evaluation path.

Writes a small synthetic YouTube-VIS dataset (fold 1's held-out class only, frames larger than
the letterbox so that it really resizes), then runs ``vipmt.testrun.run_test`` -- test.py's
whole job: index the split, build the (untrained, random-backbone) model, segment every video
with ``VideoSegmenter``, compute the metrics, write the results JSON -- with timers around its
stages. Each stage's time is exclusive (a nested stage's time is not counted in its parent), so
the stages add up to the run's wall time except for what no stage covers ("not covered").

    python benchmarks/test_profile.py                      # 2 videos of 20 frames, 360x640 -> 240x424
    python benchmarks/test_profile.py --profile            # + torch.profiler's top operators
    python benchmarks/test_profile.py --num-workers 1      # reading in a DataLoader worker
    python benchmarks/test_profile.py --compile --passes 2 # test_compile=true; pass 1 compiles
    python benchmarks/test_profile.py --quick              # tiny sizes (a smoke test)

Reading and letterboxing are timed only with ``--num-workers 0`` (the default here): with
workers they happen in other processes, and the main process sees only its wait for the next
item ("wait for the next video").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.vipmt as vipmt_model  # noqa: E402
from benchmarks.stage_clock import StageClock  # noqa: E402
from synthetic import write_synthetic_youtube_vis  # noqa: E402
from utils.runtime import reuse_freed_memory  # noqa: E402
from vipmt import evaluation, segmenter, testrun  # noqa: E402

NOT_COVERED = "not covered (loop, logging, tqdm)"

# The VIPMT named steps the engine calls, in the order they run, and their stage names.
MODEL_STEPS = {
    "extract_features": "backbone",
    "encode_support": "support encoding: masks, glue",
    "reduce_features": "reduce layer2+3 -> 384 (1x1 conv)",
    "frame_prototypes": "frame prototypes (masked pooling)",
    "merge_support": "merge support (1x1 conv)",
    "pooled_tokens": "channel pool of layer4 tokens",
    "predict_clip": "predict_clip glue (argmax, masks)",
    "merge_query": "merge query (1x1 conv)",
    "initial_logits": "initial head (residual + classifier)",
    "output_logits": "output head (residual + classifier)",
    "upsample": "8x upsampler",
    "score": "score head (PFE mask + convs + fc)",
}
# Functions models.vipmt calls by name (patched there).
MODEL_FUNCTIONS = {"support_similarity": "similarity (prior, PFE)", "prior_map": "prior map"}


def instrument_dataset(clock: StageClock, dataset):
    """Time one split's JPEG decoding, mask decoding and letterboxing (in this process only)."""
    dataset.load_image = clock.wrap("read: JPEG decode", dataset.load_image)
    dataset.load_mask = clock.wrap("read: annotation (RLE) decode", dataset.load_mask)
    dataset.transform = clock.wrap("letterbox + normalise", dataset.transform)
    return dataset


def instrument_segmenter(clock: StageClock, segmenter):
    """Time the engine and the model's named steps (instance attributes shadow the methods)."""
    model = segmenter.model
    for method in ("segment", "segment_shared"):        # test.py calls segment_shared (one video per pass)
        setattr(segmenter, method, clock.wrap("engine glue (memory, copies)", getattr(segmenter, method)))
    for method, name in MODEL_STEPS.items():
        setattr(model, method, clock.wrap(name, getattr(model, method)))
    clock.hook_module("transformer (5 layers)", model.transformer)
    return segmenter


class TimedLoader(torch.utils.data.DataLoader):
    """evaluate_split's DataLoader, timing the wait for each item."""

    clock: StageClock = None

    def __iter__(self):
        items = super().__iter__()
        while True:
            with self.clock.stage("wait for the next video (DataLoader)"):
                item = next(items, None)
            if item is None:
                return
            yield item


@contextlib.contextmanager
def instrumented(clock: StageClock):
    """Patch vipmt.evaluation's, vipmt.testrun's and models.vipmt's names with timed versions for the duration."""
    TimedLoader.clock = clock
    metrics = evaluation.FewShotEvaluator
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context
        patch(mock.patch.object(evaluation, "DataLoader", TimedLoader))
        patch(mock.patch.object(evaluation, "build_split", lambda *a, **k: instrument_dataset(
            clock, clock.wrap("index annotations (build_split)", evaluation_build_split)(*a, **k))))
        patch(mock.patch.object(testrun, "model_under_test",
                                clock.wrap("build model (random init)", testrun.model_under_test)))
        patch(mock.patch.object(testrun, "make_segmenter", lambda *a, **k: instrument_segmenter(
            clock, clock.wrap("make_segmenter (compile check)", testrun_make_segmenter)(*a, **k))))
        for method in ("video_metrics", "add_metrics"):
            patch(mock.patch.object(metrics, method, clock.wrap("metrics (J, F, IoU, VC)", getattr(metrics, method))))
        patch(mock.patch.object(metrics, "summary", clock.wrap("metrics (J, F, IoU, VC)", metrics.summary)))
        patch(mock.patch.object(testrun, "atomic_write_json",
                                clock.wrap("result I/O (JSON, log)", testrun.atomic_write_json)))
        patch(mock.patch.object(testrun, "setup_logging",
                                clock.wrap("result I/O (JSON, log)", testrun.setup_logging)))
        for function, name in MODEL_FUNCTIONS.items():
            patch(mock.patch.object(vipmt_model, function, clock.wrap(name, getattr(vipmt_model, function))))
        yield


evaluation_build_split = evaluation.build_split
testrun_make_segmenter = testrun.make_segmenter


def write_dataset(root: str, args) -> str:
    """Fold 1 holds out class 1 of categories 1..4: ``videos`` test videos of it (each the others' supports)."""
    return write_synthetic_youtube_vis(root, seed=0, videos_per_class=args.videos, frames_per_video=args.frames,
                                       frame_size=tuple(args.frame_size), num_categories=4)


def run_once(data_root: str, out_dir: str, args, clock: StageClock) -> dict:
    values = {"youtube_vis_root": data_root, "image_size": list(args.image_size), "group": 1,
              "backbone_weights": "none", "device": "cpu", "num_workers": args.num_workers,
              "test_compile": args.compile, "output_dir": out_dir, "seed": 0}
    with instrumented(clock):
        start = time.perf_counter()
        results = testrun.run_test(values, checkpoint="none", output=os.path.join(out_dir, "results.json"))
        total = time.perf_counter() - start
    frames = sum(video["frames"] for video in results["runs"][0]["videos"])
    return {"total": total, "frames": frames, "videos": len(results["runs"][0]["videos"]),
            "mean": results["runs"][0]["mean"], "videos_metrics": results["runs"][0]["videos"]}


ONE_TIME = ("index annotations (build_split)", "build model (random init)", "make_segmenter (compile check)")


def stage_table(clock: StageClock, total: float, frames: int) -> tuple[str, float]:
    """The markdown table (stage, seconds, % of total, calls) and the covered fraction."""
    rows = sorted(clock.seconds.items(), key=lambda kv: -kv[1])
    covered = sum(clock.seconds.values())
    lines = ["| stage | s | % of total | calls |", "|---|---|---|---|"]
    lines += [f"| {name} | {sec:.3f} | {100 * sec / total:.1f} | {clock.calls[name]} |" for name, sec in rows]
    lines.append(f"| {NOT_COVERED} | {total - covered:.3f} | {100 * (total - covered) / total:.1f} | |")
    lines.append(f"| **total** | **{total:.3f}** | 100 | |")
    per_video = total - sum(clock.seconds[name] for name in ONE_TIME)
    lines.append("")
    lines.append(f"{frames} frames: {total / frames:.3f} s/frame in all, {per_video / frames:.3f} s/frame without "
                 f"the one-time setup ({', '.join(ONE_TIME)})")
    return "\n".join(lines), covered / total


def load_average() -> str:
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=2, help="test videos (class 1; each is the others' support)")
    parser.add_argument("--frames", type=int, default=20, help="frames per video")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(360, 640), metavar=("H", "W"))
    parser.add_argument("--image-size", type=int, nargs=2, default=(240, 424), metavar=("H", "W"))
    parser.add_argument("--num-workers", type=int, default=0, help="test.py's num_workers (0: reading is timed)")
    parser.add_argument("--compile", action="store_true", help="test_compile=true")
    parser.add_argument("--passes", type=int, default=1,
                        help="run the test this many times in one process (tables of each; pass 1 compiles)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top operators of the last pass")
    parser.add_argument("--top", type=int, default=15, help="rows of the profiler table")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 2 videos of 3 frames, 64x112")
    parser.add_argument("--data-root", help="where to write the dataset (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the stage seconds as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.frame_size, args.image_size = 3, (72, 128), (64, 112)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="test_profile_") as tmp:
        data_root = write_dataset(args.data_root or os.path.join(tmp, "data"), args)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.videos} videos x {args.frames} "
              f"frames {args.frame_size[0]}x{args.frame_size[1]} -> {args.image_size[0]}x{args.image_size[1]}, "
              f"num_workers={args.num_workers}, test_compile={args.compile}; {load_average()} before")
        report = {}
        for number in range(1, args.passes + 1):
            clock = StageClock()
            last = number == args.passes
            profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                        if args.profile and last else contextlib.nullcontext())
            compiled_before = segmenter.compile_seconds()
            with profiler:
                run = run_once(data_root, os.path.join(tmp, f"out{number}"), args, clock)
            table, covered = stage_table(clock, run["total"], run["frames"])
            print(f"\npass {number}/{args.passes}: {run['total']:.1f} s, {run['videos']} videos, {run['frames']} frames"
                  + (f", torch.compile compiled for {segmenter.compile_seconds() - compiled_before:.1f} s"
                     if args.compile else "") + f"; {load_average()}")
            print(table)
            if args.profile and last:
                print("\ntorch.profiler, top operators by self CPU time (timers above inflated by the profiler):")
                print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
            report = {"total": run["total"], "frames": run["frames"], "covered": covered,
                      "stages": dict(clock.seconds), "mean": run["mean"],
                      "compile_seconds": segmenter.compile_seconds() - compiled_before}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return report


if __name__ == "__main__":
    reuse_freed_memory()                 # as test.py runs (not when a test imports main)
    main()
