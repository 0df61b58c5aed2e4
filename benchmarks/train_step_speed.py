"""Seconds per training step: our three-clip step vs the authors' arithmetic for the same step.

A step is what `train.py` does per batch: one episode per sample (15 query frames in three
5-frame clips, 5 supports; clips 2 and 3 reuse the backbone features of the supports and get 5
earlier query frames as memory), forward and backward of each clip, one Adam step. Batch 2 at
240x424, float32, dropout active, one process; the paths alternate and the median of --repeats
runs is reported.

* authors: the same step with the authors' arithmetic (`benchmarks.authors_loop.authors_computation`:
  unfolded backbone norms, a pooled layer4 and a full cosine map per (query, support) pair for the
  prior and the PFE mask, attention projections on every token, broadcast-and-concatenate
  before 1x1 convs, full-width concatenations before the layer2+3 reduction, the support merge and
  the score head);
* ours: `models.episode.train_episode` as train.py runs it.

Both paths run `vipmt.training.Trainer.train_step`, train.py's step (float32, no gradient
scaler), with the authors' arithmetic patched in for the first.

Every run starts from the same weights, optimizer state (after one warm-up step) and dropout
seed, so both paths compute the same losses and gradients up to float rounding: the benchmark
checks the losses (relative 1e-4) and prints the largest difference of the per-tensor gradient
norms.

    python benchmarks/train_step_speed.py                     # CPU, batch 2, 240x424, median of 3
    python benchmarks/train_step_speed.py --profile --flops   # + top operators and FLOP counts
    python benchmarks/train_step_speed.py --batch 1 --size 64 112 --repeats 1   # a quick look
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.authors_loop import authors_computation  # noqa: E402
from benchmarks.stage_clock import StageClock  # noqa: E402
from config import get_config, update_config  # noqa: E402
from models import VIPMT  # noqa: E402
from models.episode import train_episode  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from vipmt.build import training_parts_for  # noqa: E402
from vipmt.training import Trainer  # noqa: E402

IMAGE_SIZE = (240, 424)
QUERY_FRAMES, SHOTS = 15, 5  # episodes as config/config.py's query_frames and support_shots
LOSS_REL_TOL = 1e-4          # the golden cases' loss tolerance
AUTHORS, OURS = "authors' arithmetic", "ours"
# Forward stages timed by wrapping VIPMT's named steps (exclusive times: nested steps pause
# their parent); the rest of the forward is everything else inside the model call.
METHOD_STAGES = {"encode_support": "support + memory encoding",
                 "merge_query": "output and initial heads", "initial_logits": "output and initial heads",
                 "output_logits": "output and initial heads", "upsample": "output and initial heads",  # + loss upsampling
                 "score": "PFE mask + score head", "losses": "losses"}
MODULE_STAGES = {"backbone": "backbone (no grad)", "transformer": "transformer"}
REST = "rest of the forward (layer2+3 reduction, pooling, prior, masks)"
STAGE_ORDER = ["backbone (no grad)", "support + memory encoding", REST, "transformer",
               "output and initial heads", "PFE mask + score head", "losses", "backward", "optimizer step"]


def synthetic_batch(batch: int, size=IMAGE_SIZE, seed: int = 0) -> dict:
    """:func:`synthetic_episodes` as a training batch (the keys `Trainer.train_step` reads)."""
    names = ("query_img", "query_mask", "support_img", "support_mask")
    return dict(zip(names, synthetic_episodes(batch, size, seed)))


def train_step_trainer(model: VIPMT, device: torch.device = torch.device("cpu"), amp: bool = False) -> Trainer:
    """train.py's step for ``model`` (default config: Adam's settings, clips, memory size), without data:
    call ``train_step(batch)``; ``amp``: float16 autocast and a gradient scaler."""
    cfg = update_config(get_config(), {"image_size": list(model.image_size), "amp": amp, "amp_on_cpu": amp})
    parts = training_parts_for(model, cfg, DistInfo(), device)       # train.py's Adam, scaler and episode
    return Trainer(cfg, device=device, parts=parts, data=None, hooks=[])


def synthetic_episodes(batch: int, size=IMAGE_SIZE, seed: int = 0) -> tuple:
    """Noise frames with a bright ellipse moving across, one episode per sample.

    Returns query_img [B,15,3,H,W], query_mask [B,15,1,H,W], support_img [B,5,3,H,W],
    support_mask [B,5,1,H,W] (0/1 float).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")

    def frames(n, start):
        centre = torch.rand(2, generator=g)
        masks = torch.stack([(((ys - h * (0.3 + 0.4 * centre[0])) / (h / 5)) ** 2
                              + ((xs - w * (0.2 + 0.3 * centre[1]) - 3 * (start + t)) / (w / 8)) ** 2 <= 1)
                             for t in range(n)]).float()[:, None]
        return torch.randn(n, 3, h, w, generator=g) + 1.5 * masks, masks

    query = [frames(QUERY_FRAMES, 0) for _ in range(batch)]
    support = [frames(SHOTS, 20) for _ in range(batch)]
    return (torch.stack([q[0] for q in query]), torch.stack([q[1] for q in query]),
            torch.stack([s[0] for s in support]), torch.stack([s[1] for s in support]))


def attach_clock(clock: StageClock, model: VIPMT) -> None:
    """Time the model's named steps (instance attributes shadow the methods, which also catches
    the calls that the authors' predict_clip makes through `self`)."""
    for method, stage in METHOD_STAGES.items():
        setattr(model, method, clock.wrap(stage, getattr(model, method)))
    for attribute, stage in MODULE_STAGES.items():
        clock.hook_module(stage, getattr(model, attribute))


class TrainStep:
    """One training step (`Trainer.train_step`) from a fixed starting point (weights, Adam state,
    memory draws, dropout seed)."""

    def __init__(self, model: VIPMT, batch: dict, seed: int = 0):
        self.model = model
        self.batch = batch
        self.seed = seed
        self.trainer = train_step_trainer(model)
        self.optimizer = self.trainer.optimizer
        self.trainable = [p for p in model.parameters() if p.requires_grad]   # what train.py optimises
        self.clock = StageClock()
        attach_clock(self.clock, model)
        self.trainer.backward = self.clock.wrap("backward", self.trainer.backward)
        self.optimizer.step = self.clock.wrap("optimizer step", self.optimizer.step)
        self.run()                                           # warm-up; creates Adam's state
        # The starting point waits on disk: two more copies of the weights and Adam's state in
        # memory would crowd a 2-core development machine.
        self._folder = tempfile.TemporaryDirectory(prefix="train_step_speed_")
        self.start = os.path.join(self._folder.name, "start.pt")
        torch.save({"model": model.state_dict(), "optimizer": self.optimizer.state_dict()}, self.start)

    def reset_streams(self) -> None:
        """The same memory draws and dropout masks at every run."""
        torch.manual_seed(self.seed)
        self.trainer.state.memory_generator.manual_seed(self.seed)

    def run(self) -> dict:
        """One step; returns its losses, per-tensor gradient norms and the stage times."""
        clock = self.clock
        self.reset_streams()
        clock.reset()
        started, cpu_started = time.perf_counter(), time.process_time()
        with clock.stage(REST):
            losses = self.trainer.train_step(self.batch)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        grad_norms = [p.grad.double().norm().item() for p in self.trainable]     # (not timed)
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": dict(losses), "grad_norms": grad_norms,
                "stages": dict(clock.seconds)}

    def forward_only(self) -> None:
        """The step's forward without gradients (the same memory draws and dropout)."""
        from models.episode import plan_episode  # noqa: WPS433

        self.reset_streams()
        cfg, episodes = self.trainer.cfg, [self.batch[k] for k in ("query_img", "query_mask", "support_img",
                                                                   "support_mask")]
        plans = plan_episode(QUERY_FRAMES, cfg.clip_length, cfg.memory_size, self.trainer.state.memory_generator)
        with torch.no_grad():
            train_episode(self.model, *episodes, plans)

    def restore(self) -> None:
        start = torch.load(self.start, weights_only=True)
        self.model.load_state_dict(start["model"])
        self.optimizer.load_state_dict(start["optimizer"])


def top_operators(step: TrainStep, use_authors: bool, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    step.restore()
    with authors_computation() if use_authors else contextlib.nullcontext():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step.run()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36, max_shapes_column_width=70)


FLOP_GROUPS = {"backbone": "backbone", "transformer": "transformer", "score_head": "score head"}


def count_flops(step: TrainStep, use_authors: bool) -> dict:
    """FLOPs of matmuls and convolutions: the whole step (forward + backward), and the forward
    alone per part of the model (a second, gradient-free forward; PyTorch's FLOP counter charges
    functional calls to the module that makes them)."""
    totals = {}
    with authors_computation() if use_authors else contextlib.nullcontext():
        step.restore()
        counter = FlopCounterMode(display=False)
        with counter:
            step.run()
        totals["step (forward + backward)"] = counter.get_total_flops()
        step.restore()
        counter = FlopCounterMode(display=False)
        with counter:
            step.forward_only()
    root = type(step.model).__name__
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    forward = defaultdict(float)
    for name, flops in per_module.items():
        if name.startswith(root + ".") and name.count(".") == 1:
            forward[FLOP_GROUPS.get(name.split(".", 1)[1], "other layers")] += flops
    forward["functional (prior, PFE mask, reductions, merges, losses)"] = per_module.get(root, 0) - sum(forward.values())
    totals.update({f"forward: {name}": flops for name, flops in forward.items()})
    totals["forward"] = counter.get_total_flops()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=IMAGE_SIZE, metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print each path's top operators (torch.profiler)")
    parser.add_argument("--flops", action="store_true", help="also count each path's FLOPs (forward + backward)")
    parser.add_argument("--skip-authors", action="store_true", help="time our path only")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=tuple(args.size))
    step = TrainStep(model, synthetic_batch(args.batch, tuple(args.size)))
    paths = {OURS: False} if args.skip_authors else {AUTHORS: True, OURS: False}
    runs = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, use_authors in paths.items():
            step.restore()
            with authors_computation() if use_authors else contextlib.nullcontext():
                runs[name].append(step.run())

    print(f"training step: batch {args.batch}, {QUERY_FRAMES} query frames in 3 clips, {SHOTS} supports, "
          f"{args.size[0]}x{args.size[1]}, float32, dropout on; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.repeats}, alternating")
    base = statistics.median(r["seconds"] for r in runs[next(iter(paths))])
    cpu_base = statistics.median(r["cpu_seconds"] for r in runs[next(iter(paths))])
    print("| path | s / step (median) | runs (s) | speed-up | CPU s / step (median, all threads) | CPU speed-up |")
    print("|---|---|---|---|---|---|")
    for name, results in runs.items():
        seconds = [r["seconds"] for r in results]
        median, cpu = statistics.median(seconds), statistics.median(r["cpu_seconds"] for r in results)
        print(f"| {name} | {median:.2f} | {', '.join(f'{s:.1f}' for s in seconds)} | {base / median:.2f}x | "
              f"{cpu:.1f} | {cpu_base / cpu:.2f}x |")

    print("\nwhere the time goes (s, median over runs, exclusive):")
    print("| stage | " + " | ".join(paths) + " |")
    print("|---|" + "---|" * len(paths))
    for stage in STAGE_ORDER:
        cells = [statistics.median(r["stages"].get(stage, 0.0) for r in runs[name]) for name in paths]
        print(f"| {stage} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")

    if AUTHORS in runs:
        theirs, ours = runs[AUTHORS][-1], runs[OURS][-1]
        worst_loss = max(abs(ours["losses"][k] - theirs["losses"][k]) / max(abs(theirs["losses"][k]), 1e-6)
                         for k in ours["losses"])
        worst_grad = max(abs(a - b) / max(b, 1e-12) for a, b in zip(ours["grad_norms"], theirs["grad_norms"]))
        summed = ", ".join(f"{k} {v:.6f}" for k, v in ours["losses"].items())
        print(f"\nlosses: {summed}; largest relative "
              f"difference to the authors' arithmetic {worst_loss:.1e} (loss terms), {worst_grad:.1e} "
              f"(per-tensor gradient norms)")
        assert worst_loss <= LOSS_REL_TOL, f"the paths' losses differ by {worst_loss:.2e} (relative)"
    if args.flops:
        flops = {name: count_flops(step, use_authors) for name, use_authors in paths.items()}
        print("\nTFLOP per step (matmuls and convolutions):")
        print("| part | " + " | ".join(paths) + " |")
        print("|---|" + "---|" * len(paths))
        for part in flops[OURS]:
            print(f"| {part} | " + " | ".join(f"{flops[name].get(part, 0.0) / 1e12:.3f}" for name in paths) + " |")
    if args.profile:
        for name, use_authors in paths.items():
            print(f"\ntop operators, {name} (self CPU time):")
            print(top_operators(step, use_authors, rows=15))


if __name__ == "__main__":
    main()
