"""Support prototypes, the prior map and the PFE mask (docs/model.md).

The prior and the PFE mask compare channel-pooled layer4 features by cosine similarity.
The reference pools `layer4 * mask` again for every (query frame, support frame) pair and
computes a full (hw x hw) cosine map per pair. Three identities make this cheap:

* channel pooling is linear and the masks are 0/1 per position, so
  `pool(f * m) == pool(f) * m` bit for bit: every frame is pooled once;
* a masked-out position is a zero vector whose cosine with anything is exactly 0
  (`0 / (0 + eps)`), so only object rows need a matrix product and the zeros enter the
  max as a single 0 whenever a masked-out position exists;
* the PFE mask's "query background vs supports" and "query object vs supports" maps are the
  prior's per-support-frame maps maxed over frames (zero where the other mask hides the
  position), so `support_similarity` is computed once per clip for both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

POOL_EPS = 0.0005      # masked average pooling denominator
COSINE_EPS = 1e-7      # cosine denominator and min-max normalisation
PRIOR_CHANNELS = 384   # layer4's 2048 channels are average-pooled into this many bins
# Query positions per block of the cosine maps: a (rows x 400) block stays in cache for its max.
# 10 full support frames against a 5-frame clip: 0.53 s instead of 0.89 s unblocked (2 cores).
COSINE_COLUMN_BLOCK = 400


def resize_mask_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mask [..., 1, H, W] (any dtype) -> [..., 1, h, w] float, nearest-neighbour."""
    lead = mask.shape[:-3]
    flat = mask.reshape(-1, *mask.shape[-3:]).float()
    return F.interpolate(flat, size=size, mode="nearest").reshape(*lead, 1, *size)


def object_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The 0/1 object mask at feature size: `(mask == 1)` resized nearest. [..., 1, H, W] -> [..., 1, h, w]."""
    return resize_mask_nearest(mask == 1, size)


def masked_average_pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """features [N,C,h,w], mask [N,1,h,w] 0/1 -> [N,C,1,1] (the reference's WGAP)."""
    total = (features * mask).sum(dim=(2, 3), keepdim=True)
    area = mask.sum(dim=(2, 3), keepdim=True)
    return total / (area + POOL_EPS)


class ChannelPool(nn.Module):
    """`P(f)`: adaptive average pooling of the channel axis, [N,2048,h,w] -> [N,hw,384] tokens."""

    def __init__(self, out_channels: int = PRIOR_CHANNELS):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.pool(rearrange(features, "n c h w -> n (h w) c"))


def _max_cosine(rows: torch.Tensor, columns: torch.Tensor, column_norms: torch.Tensor,
                zero_row_present: bool) -> torch.Tensor:
    """max over rows of cos(row, column) for every column.

    rows [R,c], columns [M,c], column_norms [M] -> [M]. Rows that are zero vectors are left out
    by the caller; `zero_row_present` adds their exact cosine, 0, to the max.
    The reference's `r.c / (|r||c| + 1e-7)` is computed as `max_r (r/|r|).c` divided by |c|:
    no (R x M) division, and the 1e-7 only ever mattered for zero vectors, which give 0 either way.
    """
    if rows.shape[0] == 0:
        return columns.new_zeros(columns.shape[0])
    tiny = torch.finfo(rows.dtype).tiny
    unit_rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(tiny)
    best = torch.cat([(unit_rows @ block.T).amax(dim=0) for block in columns.split(COSINE_COLUMN_BLOCK)])
    best = best / column_norms.clamp_min(tiny)
    return best.clamp(min=0) if zero_row_present else best


def min_max_normalise(x: torch.Tensor) -> torch.Tensor:
    """Normalise each map to [0,1] over its last axis: [..., n] -> [..., n]."""
    low = x.amin(dim=-1, keepdim=True)
    high = x.amax(dim=-1, keepdim=True)
    return (x - low) / (high - low + COSINE_EPS)


@torch.no_grad()
def support_similarity(query_tokens: torch.Tensor, support_tokens: torch.Tensor,
                       support_mask: torch.Tensor) -> torch.Tensor:
    """For every query position, its best cosine match among each support frame's object positions.

    query_tokens [B,Tq,hw,c] and support_tokens [B,Ts,hw,c] are channel-pooled layer4 tokens,
    support_mask [B,Ts,hw] 0/1 -> [B,Ts,Tq*hw]. Both the prior (per support frame) and the PFE
    mask (max over support frames) are read from it, so it is computed once per clip.
    """
    batch, query_frames, hw, _ = query_tokens.shape
    support_frames = support_tokens.shape[1]
    maps = query_tokens.new_zeros(batch, support_frames, query_frames * hw)
    for b in range(batch):
        columns = rearrange(query_tokens[b], "t n c -> (t n) c")
        column_norms = columns.norm(dim=1)
        for s in range(support_frames):
            inside = support_mask[b, s] > 0
            maps[b, s] = _max_cosine(support_tokens[b, s][inside], columns, column_norms,
                                     zero_row_present=bool((~inside).any()))
    return maps


@torch.no_grad()
def prior_map(similarity: torch.Tensor, query_frames: int) -> torch.Tensor:
    """The PFENet-style prior of every query frame (docs/model.md, with the authors' running-mean quirk).

    similarity [B,Ts,Tq*hw] from `support_similarity`. Returns [B,Tq,hw]: for query frame t the
    mean of the min-max normalised maps of all pairs (q, s) with q <= t (the reference never
    resets its list).
    """
    support_frames = similarity.shape[1]
    maps = min_max_normalise(rearrange(similarity, "b s (t n) -> b t s n", t=query_frames))
    per_frame_sum = maps.sum(dim=2).cumsum(dim=1)                       # [B,Tq,hw]
    pairs_so_far = torch.arange(1, query_frames + 1, device=maps.device) * support_frames
    return per_frame_sum / pairs_so_far.view(1, -1, 1)


@torch.no_grad()
def pfe_mask(query_tokens: torch.Tensor, query_object: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """The 5-channel prior-feature-enrichment mask the score head reads (docs/model.md, "Output head, score head, upsampling").

    query_tokens [B,Tq,hw,c] channel-pooled layer4 tokens, query_object [B,Tq,hw] predicted 0/1
    query mask, similarity [B,Ts,Tq*hw] from `support_similarity` (the query background's best
    support match is the query position's best match wherever the mask is 0, and 0 elsewhere,
    where the background features are zero vectors).
    Returns [B,Tq,5,hw]: the query mask; the best support match of the query background and of
    the query object; for each object position its best background match and for each
    background position its best object match (each map min-max normalised).
    """
    batch, query_frames, hw, _ = query_tokens.shape
    out = query_tokens.new_zeros(batch, query_frames, 5, hw)
    out[:, :, 0] = query_object
    best_support = rearrange(similarity.amax(dim=1), "b (t n) -> b t n", t=query_frames)
    for b in range(batch):
        is_object = query_object[b] > 0
        out[b, :, 1] = torch.where(is_object, 0.0, best_support[b])
        out[b, :, 2] = torch.where(is_object, best_support[b], 0.0)
        for t in range(query_frames):
            background = query_tokens[b, t][~is_object[t]]
            foreground = query_tokens[b, t][is_object[t]]
            if len(background) == 0 or len(foreground) == 0:
                continue  # one side is all zero vectors: every cosine is 0
            cosine = (background @ foreground.T) / (
                background.norm(dim=1, keepdim=True) * foreground.norm(dim=1).unsqueeze(0) + COSINE_EPS)
            # Zero vectors of the other side always take part in the reference's max: clamp at 0.
            out[b, t, 3][is_object[t]] = cosine.amax(dim=0).clamp(min=0)
            out[b, t, 4][~is_object[t]] = cosine.amax(dim=1).clamp(min=0)
    out[:, :, 1:] = min_max_normalise(out[:, :, 1:])
    return out
