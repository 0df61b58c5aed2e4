"""The three-clip episode protocol shared by training and validation (docs/protocol.md, "Training").

An episode has 15 query frames cut into 5-frame clips. Clip 1 is segmented against the 5
support images. Every later clip also gets *memory*: earlier query frames with their
ground-truth masks, whose backbone features are reused instead of recomputed. Memory is all
earlier frames when there are at most `memory_size` of them (clip 2: frames 0-4), otherwise
`memory_size` of them drawn at random and sorted (clip 3: 5 of frames 0-9).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from config import DEFAULTS

from .engine import draw_memory


@dataclass(frozen=True)
class ClipPlan:
    frames: list      # query frame indices of the clip
    memory: list      # earlier query frame indices used as memory (empty for clip 1)


def plan_episode(num_frames: int, clip_length: int = DEFAULTS.clip_length, memory_size: int = DEFAULTS.memory_size,
                 generator: torch.Generator | None = None) -> list[ClipPlan]:
    """Cut `num_frames` into clips and draw each clip's memory frames from all earlier frames
    (`draw_memory`: one randperm from `generator` per clip with more than `memory_size`)."""
    plans = []
    for start in range(0, num_frames, clip_length):
        frames = list(range(start, min(start + clip_length, num_frames)))
        plans.append(ClipPlan(frames, draw_memory(list(range(start)), memory_size, generator)))
    return plans


def _gather(features: list[dict], index: list) -> dict:
    """Concatenate per-clip feature dicts along time and pick frames: -> {'k': [B,len(index),...]}."""
    return {k: torch.cat([f[k] for f in features], dim=1)[:, index] for k in features[0]}


def _join(a: dict, b: dict) -> dict:
    return {k: torch.cat((a[k], b[k]), dim=1) for k in a}


def train_episode(model: nn.Module, query_img: torch.Tensor, query_mask: torch.Tensor,
                  support_img: torch.Tensor, support_mask: torch.Tensor, plans: list[ClipPlan],
                  backward: Callable[[torch.Tensor], None] | None = None) -> list[dict]:
    """Run the clips of one episode in training mode.

    model: VIPMT in train mode, possibly wrapped in DistributedDataParallel (it is only called).
    query_img [B,T,3,H,W], query_mask [B,T,1,H,W], support_img [B,S,3,H,W], support_mask [B,S,1,H,W]
    (S = 1..5 annotated supports: the transformer's support branch; memory frames go to its memory branch).
    backward: called with each clip's total loss right after its forward, so every clip's graph
    is freed before the next (the gradients add up to those of the summed loss).
    Under DistributedDataParallel with `backward`, every clip but the last runs its forward and
    backward inside `no_sync()`: the clips' gradients add up locally and are all-reduced once,
    with the last clip's backward (one all-reduce per episode instead of one per clip).
    Returns one dict per clip with the detached loss terms ('loss', 'main_loss', ...) and 'pred'.
    """
    defer_sync = isinstance(model, DistributedDataParallel) and backward is not None
    shots = support_img.shape[1]        # every support image is annotated; memory frames follow them
    support_features, clip_features, results = None, [], []
    for index, plan in enumerate(plans):
        if plan.memory:
            support = _join(support_features, _gather(clip_features, plan.memory))
            masks = torch.cat((support_mask, query_mask[:, plan.memory]), dim=1)
        else:
            support, masks = support_img, support_mask
        local_only = defer_sync and index < len(plans) - 1
        # no_sync must cover the forward too: DDP arms its gradient hooks in forward.
        with model.no_sync() if local_only else contextlib.nullcontext():
            out = model(query_img[:, plan.frames], query_mask[:, plan.frames], support, masks, shots=shots)
            if backward is not None:
                backward(out["loss"])
        if support_features is None:
            support_features = out["support_features"]
        clip_features.append(out["query_features"])
        results.append({k: v.detach() for k, v in out.items() if torch.is_tensor(v)})
    return results


@torch.no_grad()
def predict_episode(model: nn.Module, query_img: torch.Tensor, query_mask: torch.Tensor,
                    support_img: torch.Tensor, support_mask: torch.Tensor,
                    plans: list[ClipPlan]) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation: the same clips in eval mode, memory from query frames with ground-truth masks.

    model: an unwrapped VIPMT in eval mode. Shapes as `train_episode`.
    Returns pred [B,T,H,W] int64 and score [B,T].
    """
    support_features = model.extract_features(support_img)
    clip_features, preds, scores = [], [], []
    for plan in plans:
        clip_features.append(model.extract_features(query_img[:, plan.frames]))
        support, masks = support_features, support_mask
        if plan.memory:
            support = _join(support_features, _gather(clip_features[:-1], plan.memory))
            masks = torch.cat((support_mask, query_mask[:, plan.memory]), dim=1)
        clip = model.predict_clip(clip_features[-1], support, masks, query_mask[:, plan.frames],
                                  shots=support_img.shape[1])
        preds.append(clip.pred)
        scores.append(clip.score)
    return torch.cat(preds, dim=1), torch.cat(scores, dim=1)
