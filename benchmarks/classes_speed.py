"""CPU cost per frame of K classes in one pass against K separate passes, and of clip_length 1 against 5.

    python benchmarks/classes_speed.py                          # 120x216 model, 10 frames, K = 1 2 4, one thread
                                                                # (and 20 frames at clip_length 1 and 5)
    python benchmarks/classes_speed.py --classes 1 2 --frames 5 --rounds 1

`Predictor.segment_classes(video, {name: supports})` encodes each query frame once for all K
classes; K calls of `Predictor.segment` encode it K times. Both run side by side in this process
(interleaved, `--rounds` times, the fastest round kept; the process's CPU seconds, one
thread, which the load of other processes distorts less than the wall clock) on a random-weight model with every frame
reliable (memory threshold 0: each class draws and encodes memory, the most per-class work), with
the frames through the backbone counted (`VIPMT.extract_features` wrapped). The second table runs
the same video with clip_length 1 and 5 (one class): seconds per frame, and the frame at which the
first mask is handed back. Prints markdown tables and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import VIPMT  # noqa: E402
from vipmt import Predictor  # noqa: E402

FRAME_HW = (240, 424)


def frame_at(t: int, rng_seed: int = 0) -> np.ndarray:
    """A textured frame with a bright disc moving right and a dark box moving down."""
    h, w = FRAME_HW
    frame = np.random.default_rng(rng_seed + t).integers(0, 90, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    frame[(yy - 120) ** 2 + (xx - 60 - 8 * t) ** 2 <= 40 ** 2] = (240, 200, 40)
    frame[20 + 6 * t:80 + 6 * t, 300:380] = (20, 20, 160)
    return frame


def class_supports(k: int) -> dict:
    """K classes, each with 2 supports: the disc, the box, then quadrants of the frame."""
    h, w = FRAME_HW
    yy, xx = np.mgrid[:h, :w]
    classes = {}
    for c in range(k):
        images, masks = [], []
        for t in (12 + c, 16 + c):
            image = frame_at(t)
            if c == 0:
                mask = (yy - 120) ** 2 + (xx - 60 - 8 * t) ** 2 <= 40 ** 2
            elif c == 1:
                mask = np.zeros((h, w), bool)
                mask[20 + 6 * t:80 + 6 * t, 300:380] = True
            else:
                mask = (yy < h // 2) == (c % 2 == 0)
                mask &= (xx < w // 2) == (c // 2 % 2 == 0)
            images.append(image)
            masks.append(mask.astype(np.uint8))
        classes[f"class{c}"] = (images, masks)
    return classes


class Counter:
    """Frames through `model.extract_features` (the backbone)."""

    def __init__(self, model: VIPMT):
        self.frames = 0
        extract = model.extract_features

        def counted(images):
            self.frames += images.shape[0] * images.shape[1]
            return extract(images)

        model.extract_features = counted


def timed(call) -> tuple[float, object]:
    """(CPU seconds of this process, result): with one thread, less distorted by other processes'
    load than wall time (`--wall` times the wall clock instead)."""
    start = CLOCK()
    result = call()
    return CLOCK() - start, result


CLOCK = time.process_time


def classes_table(model: VIPMT, counter: Counter, frames: list, ks: list, rounds: int) -> list[dict]:
    predictor = Predictor(model, memory_threshold=0.0)
    rows = []
    for k in ks:
        classes = class_supports(k)
        best = {"separate": float("inf"), "one pass": float("inf")}
        backbone = {}
        for _ in range(rounds):
            for kind in ("separate", "one pass"):       # side by side, alternating
                counter.frames = 0
                if kind == "separate":
                    seconds, results = timed(lambda: {name: list(predictor.segment(frames, *supports))
                                                      for name, supports in classes.items()})
                    separate = results
                else:
                    seconds, results = timed(lambda: list(predictor.segment_classes(frames, classes)))
                    together = results
                best[kind] = min(best[kind], seconds)
                backbone[kind] = counter.frames
        same = all(np.array_equal(r.mask, per_frame[name].mask) and r.score == per_frame[name].score
                   for name in classes for r, per_frame in zip(separate[name], together))
        rows.append({"classes": k, "separate_s_per_frame": best["separate"] / len(frames),
                     "one_pass_s_per_frame": best["one pass"] / len(frames),
                     "speedup": best["separate"] / best["one pass"],
                     "backbone_frames_separate": backbone["separate"], "backbone_frames_one_pass": backbone["one pass"],
                     "identical": same})
    return rows


def clip_length_table(model: VIPMT, frames: list, rounds: int) -> list[dict]:
    classes = class_supports(1)
    supports = classes["class0"]
    best, first = {1: float("inf"), 5: float("inf")}, {}
    for _ in range(rounds):
        for clip_length in (1, 5):
            predictor = Predictor(model, memory_threshold=0.0, clip_length=clip_length)
            session = predictor.start(*supports)
            start = CLOCK()
            for t, frame in enumerate(frames):
                if session.add_frame(frame) and clip_length not in first:
                    first[clip_length] = t
            session.flush()
            best[clip_length] = min(best[clip_length], CLOCK() - start)
    return [{"clip_length": c, "s_per_frame": best[c] / len(frames), "first_mask_after_frame": first.get(c)}
            for c in (1, 5)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", nargs=2, type=int, default=[120, 216], metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--classes", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--clip-frames", type=int, default=20, help="frames of the clip_length comparison")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="time the wall clock, not this process's CPU time")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=tuple(args.model_size)).eval()
    counter = Counter(model)
    frames = [frame_at(t) for t in range(args.frames)]
    list(Predictor(model).segment(frames[:2], *class_supports(1)["class0"]))       # warm-up
    classes = classes_table(model, counter, frames, args.classes, args.rounds)
    clips = clip_length_table(model, [frame_at(t % 25) for t in range(args.clip_frames)], args.rounds)
    load = os.getloadavg()
    clock = "wall-clock" if args.wall else "CPU"
    print(f"model {args.model_size[0]}x{args.model_size[1]}, {args.frames} frames of {FRAME_HW[0]}x{FRAME_HW[1]}, "
          f"{args.threads} thread(s), {clock} seconds, fastest of {args.rounds} rounds, load average {load[0]:.2f}\n")
    print("| classes K | K separate passes (s/frame) | one pass (s/frame) | speed-up | backbone frames "
          "(separate / one pass) | identical |")
    print("|---|---|---|---|---|---|")
    for r in classes:
        print(f"| {r['classes']} | {r['separate_s_per_frame']:.3f} | {r['one_pass_s_per_frame']:.3f} | "
              f"{r['speedup']:.2f}x | {r['backbone_frames_separate']} / {r['backbone_frames_one_pass']} | "
              f"{r['identical']} |")
    print(f"\n{args.clip_frames} frames, one class:\n")
    print("| clip_length | s/frame | first mask handed back after frame |")
    print("|---|---|---|")
    for r in clips:
        print(f"| {r['clip_length']} | {r['s_per_frame']:.3f} | {r['first_mask_after_frame']} |")
    print(json.dumps({"model_size": args.model_size, "frames": args.frames, "threads": args.threads,
                      "clock": clock, "load_average": load[0], "classes": classes, "clip_length": clips}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
