"""Training losses (docs/model.md, "Losses"). Each function documents its shapes; `VIPMTLoss` combines
them with named weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

DICE_EPS = 1e-8
CONTRAST_EPS = 1e-7
FINAL_WEIGHT, INITIAL_WEIGHT = 0.7, 0.3            # main loss: final vs initial prediction
AUX_QUERY_WEIGHT, AUX_SUPPORT_WEIGHT = 0.3, 0.7    # aux loss: query vs support maps


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weighted dice on sigmoid of both logits. logits [N,2,H,W], target [N,H,W] 0/1 -> scalar."""
    prob = logits.sigmoid().flatten(2)
    onehot = torch.stack((target == 0, target == 1), dim=1).flatten(2).to(prob.dtype)
    overlap = (prob * onehot).sum(-1)
    denominator = (prob.pow(2).sum(-1) + onehot.pow(2).sum(-1)).clamp(min=DICE_EPS)
    return (1 - 2 * overlap / denominator).sum() / logits.shape[0]


def iou_losses(logits: torch.Tensor, target: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft mean-IoU and overall-IoU losses. logits [B*T,2,H,W], target [B*T,H,W] -> two scalars."""
    prob = rearrange(logits.softmax(dim=1)[:, 1], "(b t) h w -> b t (h w)", b=batch)
    target = rearrange(target.to(prob.dtype), "(b t) h w -> b t (h w)", b=batch)
    inter = torch.minimum(prob, target).sum(-1)    # [B,T]
    union = torch.maximum(prob, target).sum(-1)
    mean_iou = 1 - (inter / union).mean(dim=1)
    overall_iou = 1 - inter.sum(dim=1) / union.sum(dim=1)
    return mean_iou.mean(), overall_iou.mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, batch: int) -> torch.Tensor:
    """dice + mean-IoU + overall-IoU."""
    return dice_loss(logits, target) + sum(iou_losses(logits, target, batch))


def frame_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard IoU per frame. pred, target [N,H,W] 0/1 -> [N]; an empty union counts as union 1 (IoU 0)."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return inter / torch.where(union == 0, torch.ones_like(union), union)


def score_loss(score: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and actual IoU. score [B,T], pred/target [B,T,H,W] -> sum / B."""
    actual = frame_iou(pred.flatten(0, 1), target.flatten(0, 1)).view_as(score)
    return (score - actual).abs().sum() / score.shape[0]


def mean_bce(maps: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over maps of BCE-with-logits. maps: list of [B,T,h,w]; target [B,T,h,w] 0/1."""
    return sum(F.binary_cross_entropy_with_logits(m, target) for m in maps) / len(maps)


def contrast_loss(cross_video: torch.Tensor, query_object: torch.Tensor) -> torch.Tensor:
    """Push other videos' prototypes off this query's object.

    cross_video [B,K,T,h,w] logits, query_object [B,T,h,w] 0/1 -> scalar (0 when K == 0).
    """
    maps = cross_video.shape[1]
    if maps == 0:
        return cross_video.new_zeros(())
    area = query_object.sum() + CONTRAST_EPS
    total = cross_video.new_zeros(())
    for k in range(maps):
        bce = F.binary_cross_entropy_with_logits(cross_video[:, k], 1 - query_object, reduction="none")
        total = total + (bce * query_object).sum() / area
    return total / (maps + CONTRAST_EPS)


LOSS_TERMS = ("main", "aux", "contrast", "score")     # a clip's loss terms, ``<name>_loss`` in its outputs


@dataclass
class LossWeights:
    """Weights of the four per-clip loss terms (all 1 in the reference)."""
    main: float = 1.0
    aux: float = 1.0
    contrast: float = 1.0
    score: float = 1.0
    names: tuple = field(default=LOSS_TERMS, repr=False)

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(getattr(self, name) * terms[f"{name}_loss"] for name in self.names)
