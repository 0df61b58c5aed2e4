"""CPU inference in float32, bfloat16 autocast and from float16-rounded weights, side by side.

Segments one synthetic video (5 supports, 240x424, memory on every clip) with the golden cases'
weights (``tests/reference_cases.py``: random, with classifier heads that do not put every pixel
in one class; no trained model is in the repository) in one process, one thread, alternating
the precisions, and prints per precision the CPU seconds per frame (median of --repeats; this
process's CPU time, which the load of other processes disturbs far less than the wall time, also
printed) and how far its masks and scores are from float32's. The three:

* float32: the default of test.py, predict.py and the Predictor;
* bf16 autocast: ``predict.py --bf16``, ``test_bf16=true``, ``Predictor(bf16=True)``; fast only on a
  CPU that computes bfloat16 natively (AMX-BF16 / AVX512-BF16; utils.runtime.native_bf16_cpu);
* float16 weights: a ``python -m vipmt.export --half`` file, loaded (as float32) and run in float32.

With --sizes DIR it also writes a full checkpoint (Adam state after one step, as train.py saves
it), its export and its --half export of the 240x424 model into DIR and prints their sizes.

    python benchmarks/cpu_precision.py --frames 10 --repeats 2
    python benchmarks/cpu_precision.py --frames 0 --sizes /tmp/sizes
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))   # the golden cases' weights

from benchmarks.engine_speed import IMAGE_SIZE, synthetic_video  # noqa: E402
from models import VIPMT, VideoSegmenter  # noqa: E402
from reference_cases import reference_state_dict  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.runtime import native_bf16_cpu, reuse_freed_memory  # noqa: E402
from vipmt.export import export_model  # noqa: E402


def model_with_float16_weights(model: VIPMT) -> VIPMT:
    """A copy whose floating-point weights are rounded to float16 and widened back (what loading a
    --half export gives)."""
    copy = VIPMT(backbone_weights=None, image_size=model.image_size)
    copy.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return copy.eval()


def sizes(model: VIPMT, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable)
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    full = save_checkpoint(os.path.join(folder, "last.pth"), model=model, epoch=1, optimizer=optimizer,
                           config={"image_size": list(IMAGE_SIZE)})
    values = sum(t.numel() for t in model.state_dict().values())
    print(f"state dict: {values / 1e6:.1f} M values ({sum(p.numel() for p in trainable) / 1e6:.1f} M trainable)")
    for name, half in (("export", False), ("export --half", True)):
        out = export_model(full, os.path.join(folder, f"{name.replace(' --', '_')}.pth"), half=half, overwrite=True)
        print(f"| {name} | {out.bytes:,} bytes ({out.bytes / 1e6:.0f} MB) |")
    print(f"| full checkpoint (train.py's last.pth) | {os.path.getsize(full):,} bytes "
          f"({os.path.getsize(full) / 1e6:.0f} MB) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", metavar="DIR", help="also write the 240x424 checkpoint and its exports here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()                                   # as test.py / predict.py run
    model = VIPMT(backbone_weights=None, image_size=IMAGE_SIZE).eval()
    model.load_state_dict(reference_state_dict(0))         # random, but its masks are not all one class
    if args.sizes:
        sizes(model, args.sizes)
    if not args.frames:
        return
    frames, support_img, support_mask = synthetic_video(args.frames, 5)
    options = dict(memory_threshold=0.0, memory_size=5)
    halved = model_with_float16_weights(model)
    paths = {"float32": VideoSegmenter(model, **options),
             "bf16 autocast": VideoSegmenter(model, autocast_dtype=torch.bfloat16, **options),
             "float16 weights (export --half)": VideoSegmenter(halved, **options)}
    for segmenter in paths.values():                       # warm-up: oneDNN picks and caches its kernels
        segmenter.segment(frames[:2], support_img, support_mask, generator=torch.Generator().manual_seed(0))
    times = {name: [] for name in paths}            # CPU seconds of this process: what the load disturbs least
    walls = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.repeats):
        for name, segmenter in paths.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = segmenter.segment(frames, support_img, support_mask,
                                              generator=torch.Generator().manual_seed(0))
            times[name].append(time.process_time() - start_cpu)
            walls[name].append(time.perf_counter() - start)
    load = os.getloadavg()
    print(f"{args.frames} frames, 5 supports, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, memory on every clip; CPU "
          f"{platform.processor() or platform.machine()}, native bf16: {native_bf16_cpu() or 'no'}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, median of {args.repeats}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    reference = outputs["float32"]
    base = statistics.median(times["float32"])
    foreground = reference.pred.float().mean().item()
    print(f"float32 predicts {foreground:.1%} of the pixels as the object")
    print("| precision | CPU-s / frame | speed vs float32 | wall s / frame | pixels differing from float32 "
          "| frames whose mask differs | max score diff |")
    print("|---|---|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        out = outputs[name]
        differing = (out.pred != reference.pred).float().mean().item()
        frames_differing = int((out.pred != reference.pred).flatten(1).any(1).sum())
        print(f"| {name} | {median / args.frames:.2f} | {base / median:.2f}x | "
              f"{statistics.median(walls[name]) / args.frames:.2f} | {differing:.4%} | "
              f"{frames_differing} of {args.frames} | {(out.score - reference.score).abs().max().item():.1e} |")


if __name__ == "__main__":
    main()
