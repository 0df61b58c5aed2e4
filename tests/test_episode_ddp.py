"""train_episode under DistributedDataParallel: one gradient all-reduce per episode.

Two CPU processes (gloo), 64x64 frames, a random backbone, three 1-frame clips of a batch of 2
per rank (different data on each rank). Every rank runs the same episode three ways from the
same weights and dropout seed: plain (local gradients only), DDP through `train_episode`
(deferred sync), and DDP with a sync after every clip (the behaviour before no_sync).
"""
from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from helpers import reference_case
from models import VIPMT
from models.episode import plan_episode, train_episode

SIZE = (64, 64)
WORLD = 2
ADAM = dict(lr=5e-4, betas=(0.9, 0.999), weight_decay=5e-4)


class SyncEveryClip(nn.Module):
    """Hides the DDP wrapper from train_episode, so that each clip's backward all-reduces
    (what every step did before the deferred sync)."""

    def __init__(self, ddp: DistributedDataParallel):
        super().__init__()
        self.ddp = ddp

    def forward(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counting_allreduce(calls: list):
    """DDP's default all-reduce (mean), recording each bucket it is launched for."""
    def hook(state, bucket):
        calls.append((bucket.index(), bucket.buffer().numel(), bucket.is_last()))
        return default_hooks.allreduce_hook(state, bucket)
    return hook


def _trainable(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _all_equal(a: list, b: list) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _worker(rank: int, port: int, out_dir: str) -> None:
    """Runs the three variants and writes what the test checks (counts, equalities, ulps)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)                                       # the same weights on both ranks
        base = VIPMT(backbone_weights=None, image_size=SIZE).train()
        x = reference_case.reference_inputs(500 + rank, 2, 3, 5, size=SIZE)   # each rank its own data
        args = (x["query_img"], x["query_mask"], x["support_img"], x["support_mask"])
        plans = plan_episode(3, clip_length=1, memory_size=1, generator=torch.Generator().manual_seed(1))

        def episode(model, runner):
            torch.manual_seed(100 + rank)                          # the same dropout draws in every variant
            results = train_episode(runner, *args, plans, backward=lambda loss: loss.backward())
            return [p.grad for p in _trainable(model)], [r["loss"] for r in results]

        local_grads, local_losses = episode(*[copy.deepcopy(base)] * 2)
        # What one all-reduce of the locally accumulated gradients must give: their mean over ranks
        # (each rank's three-clip sum), and the weights after one Adam step on it.
        expected = copy.deepcopy(base)
        for p, g in zip(_trainable(expected), local_grads):
            parts = [torch.empty_like(g) for _ in range(WORLD)]
            dist.all_gather(parts, g)
            p.grad = (parts[0] + parts[1]) / WORLD
        expected_grads = [p.grad for p in _trainable(expected)]
        torch.optim.Adam(_trainable(expected), **ADAM).step()
        del local_grads

        out = {"trainable_numel": sum(p.numel() for p in _trainable(base))}
        for name in ("deferred", "every_clip"):
            model = copy.deepcopy(base)
            ddp = DistributedDataParallel(model)
            calls = []
            ddp.register_comm_hook(None, _counting_allreduce(calls))
            runner = ddp if name == "deferred" else SyncEveryClip(ddp)
            grads, losses = episode(model, runner)
            optimizer = torch.optim.Adam(_trainable(model), **ADAM)
            optimizer.step()
            result = {"calls": list(calls), "losses_equal": _all_equal(losses, local_losses)}
            if name == "deferred":
                result["grads_equal"] = _all_equal(grads, expected_grads)
                result["weights_equal"] = _all_equal(_trainable(model), _trainable(expected))
                same_on_ranks = True
                for p in _trainable(model):
                    theirs = p.detach().clone()
                    dist.broadcast(theirs, src=0)
                    same_on_ranks &= torch.equal(theirs, p)
                result["weights_equal_across_ranks"] = same_on_ranks
                deferred_grads = [g.clone() for g in grads]
                # DDP keeps every gradient in one bucket until its first backward, then rebuilds
                # 25 MB buckets: a second step shows each of them launched once per step too.
                optimizer.zero_grad(set_to_none=True)
                calls.clear()
                episode(model, runner)
                result["second_step_calls"] = list(calls)
            else:
                # Largest difference to the deferred gradients, in float32 ulps of the tensor's largest element.
                result["ulps"] = max(((a - b).abs().max() / (torch.finfo(b.dtype).eps * b.abs().max())).item()
                                     for a, b in zip(deferred_grads, grads) if b.abs().max() > 0)
                result["zero_grads_equal"] = all(torch.equal(a, b) for a, b in zip(deferred_grads, grads)
                                                 if b.abs().max() == 0)
            out[name] = result
            del model, ddp, runner, optimizer, grads
        torch.save(out, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
def test_one_all_reduce_per_episode(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        deferred, every_clip = r["deferred"], r["every_clip"]
        # DDP leaves the forward alone: the same losses as without it.
        assert deferred["losses_equal"] and every_clip["losses_equal"]
        # Deferred: one launch of each bucket per step, covering every trainable element once
        # (step 1: DDP's single first-iteration bucket; step 2: the rebuilt buckets).
        for calls in (deferred["calls"], deferred["second_step_calls"]):
            assert [last for _, _, last in calls] == [False] * (len(calls) - 1) + [True]
            assert sorted(index for index, _, _ in calls) == list(range(len(calls)))
            assert sum(numel for _, numel, _ in calls) == r["trainable_numel"]
        assert len(deferred["second_step_calls"]) > 1
        # Before: every bucket once per clip.
        assert sum(last for _, _, last in every_clip["calls"]) == 3
        assert sum(numel for _, numel, _ in every_clip["calls"]) == 3 * r["trainable_numel"]
        # Deferred = the mean over ranks of the local three-clip sums, bit for bit (a sum of two
        # halves is exact in any order), and so are the weights after one Adam step, on both ranks.
        assert deferred["grads_equal"] and deferred["weights_equal"] and deferred["weights_equal_across_ranks"]
        # Against the per-clip all-reduce: the same sum, rounded in another order
        # (mean(g1) + mean(g2) + mean(g3) vs mean(g1 + g2 + g3)): a few float32 ulps of each
        # tensor's largest element (measured: 1.6 ulps at most). The weights after Adam's first
        # step are not compared with it: that step is lr * g / (|g| + 1e-8), so a gradient
        # element near 0 turns a one-ulp difference into up to 2 * lr (measured: 3.1e-6).
        assert every_clip["ulps"] <= 8 and every_clip["zero_grads_equal"]
