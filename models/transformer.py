"""The VIPMT transformer: clip, memory and frame prototypes refined over 5 iterations (docs/model.md, "The transformer").

Module and attribute names follow the reference parameter names
(`transformer.query_decoder_cross_attention_layers.0.q_fc.weight`, ...), so the authors'
checkpoints load unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

MASK_PENALTY = -10000.0       # added to attention logits of masked-out keys
POSITION_TEMPERATURE = 10000
POSITION_SCALE = 2 * math.pi
POSITION_EPS = 1e-6
IGNORE_LABEL = 255            # query-mask value that marks ignored pixels (positional encoding)
SELF_ATTENTION_HEADS = 8
SPATIAL_REDUCTION = 4
# The authors' transformer takes the first 5 support frames as annotated supports and the rest as
# memory, and passes no memory at all only when there are exactly 5 frames (`if s_t == 5`): fewer
# frames get an EMPTY memory, whose prototype still adds LN(FFN(LN(0 + p))) to the clip prototype.
AUTHORS_SHOTS = 5


class FFN(nn.Module):
    """x + Dropout(W2 Dropout(ReLU(W1 x))), no biases (reference names `layers.0.0`, `layers.1`)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(hidden, dim, bias=False),
            nn.Dropout(dropout),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.layers(x))


class PrototypeCrossAttention(nn.Module):
    """One-head cross attention from prototypes to masked tokens.

    Given several token sets, their masked logits share one softmax (support + memory).
    """

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.q_fc = nn.Linear(dim, dim, bias=False)
        self.k_fc = nn.Linear(dim, dim, bias=False)
        self.v_fc = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)
        self.scale = dim ** -0.5

    def forward(self, prototype: torch.Tensor, token_sets: list[torch.Tensor],
                masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """prototype [N,P,C]; token_sets[k] [N,L_k,C] with masks[k] [N,L_k] bool -> one [N,P,C] per set."""
        # With few prototypes and many tokens, apply the key/value projections on the prototype
        # side: q.(Wk x) == (q Wk).x and a @ (x Wv^T) == (a @ x) Wv^T, so the (L x C x C)
        # projections of the tokens are never formed.
        query = self.q_fc(prototype) @ self.k_fc.weight                           # [N,P,C]
        logits = [(query @ tokens.transpose(1, 2)) * self.scale
                  + (~mask).to(query.dtype).unsqueeze(1) * MASK_PENALTY
                  for tokens, mask in zip(token_sets, masks)]
        weights = self.attn_drop(torch.cat(logits, dim=2).softmax(dim=2))
        outputs, start = [], 0
        for tokens in token_sets:
            part = weights[:, :, start:start + tokens.shape[1]]
            start += tokens.shape[1]
            outputs.append(self.proj_drop(self.proj(self.v_fc(part @ tokens))))
        return outputs


class SpatialReductionAttention(nn.Module):
    """PVT self attention: keys/values from a 4x-strided conv of the token map, 8 heads."""

    def __init__(self, dim: int, dropout: float, heads: int = SELF_ATTENTION_HEADS,
                 reduction: int = SPATIAL_REDUCTION):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, kernel_size=reduction, stride=reduction)
        self.norm = nn.LayerNorm(dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x [N, h*w, C] tokens of one frame each -> [N, h*w, C]."""
        h, w = size
        query = rearrange(self.q(x), "n l (m d) -> n m l d", m=self.heads)
        reduced = self.sr(rearrange(x, "n (h w) c -> n c h w", h=h, w=w))
        reduced = self.norm(rearrange(reduced, "n c h w -> n (h w) c"))
        key, value = rearrange(self.kv(reduced), "n l (two m d) -> two n m l d", two=2, m=self.heads)
        dropout = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        return self.proj_drop(self.proj(rearrange(out, "n m l d -> n l (m d)")))


def sine_position_encoding(ignore: torch.Tensor, channels: int) -> torch.Tensor:
    """DETR sine encoding of the valid (non-ignored) area. ignore [N,h,w] bool -> [N,C,h,w]."""
    valid = (~ignore).float()
    y = valid.cumsum(dim=1)
    x = valid.cumsum(dim=2)
    y = y / (y[:, -1:, :] + POSITION_EPS) * POSITION_SCALE
    x = x / (x[:, :, -1:] + POSITION_EPS) * POSITION_SCALE
    per_axis = channels // 2
    index = torch.arange(per_axis, dtype=torch.float32, device=ignore.device)
    frequencies = POSITION_TEMPERATURE ** (2 * torch.div(index, 2, rounding_mode="floor") / per_axis)

    def encode(coord: torch.Tensor) -> torch.Tensor:
        phase = coord.unsqueeze(-1) / frequencies                          # [N,h,w,per_axis]
        return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=4).flatten(3)

    return rearrange(torch.cat((encode(y), encode(x)), dim=3), "n h w c -> n c h w")


def conv1x1_with_constants(block: nn.Sequential, parts: list[torch.Tensor]) -> torch.Tensor:
    """`block(cat(parts))` for a no-bias 1x1 conv + ReLU block, where some parts are constant over
    positions: given as [N,C_k] instead of [N,C_k,h,w], their share of the conv is a per-sample
    bias and the broadcast is never materialised.

    parts: in channel order, each [N,C_k,h,w] or [N,C_k] -> [N,out,h,w].
    """
    conv, activation = block
    weights = conv.weight[:, :, 0, 0].split([part.shape[1] for part in parts], dim=1)
    maps = [(part, weight) for part, weight in zip(parts, weights) if part.dim() == 4]
    x = maps[0][0] if len(maps) == 1 else torch.cat([part for part, _ in maps], dim=1)
    x = F.conv2d(x, torch.cat([weight for _, weight in maps], dim=1)[:, :, None, None])
    bias = sum(part @ weight.T for part, weight in zip(parts, weights) if part.dim() == 2)
    return activation(x + bias[:, :, None, None])


def conv_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False), nn.ReLU(inplace=True))


def residual_block(ch: int) -> nn.Sequential:
    """conv3x3 + ReLU twice, no biases (used with an outer residual connection)."""
    return nn.Sequential(*conv_relu(ch, ch, 3), *conv_relu(ch, ch, 3))


def support_memory_split(tokens: torch.Tensor, mask: torch.Tensor, shots: int, frames: int):
    """The support branch's and the memory branch's (tokens, mask) from frame-major tokens [B, Ts*hw, C]
    and mask [B, Ts*hw]: the first `shots` of the `frames` frames, and the rest. The memory is None
    (no memory branch) when there are AUTHORS_SHOTS supports and no memory frame, else the rest,
    possibly empty."""
    if not 1 <= shots <= frames:
        raise ValueError(f"shots={shots} must be in 1..{frames} (the support frames given)")
    split = tokens.shape[1] // frames * shots
    supports = (tokens[:, :split], mask[:, :split])
    if shots == frames == AUTHORS_SHOTS:
        return supports, None
    return supports, (tokens[:, split:], mask[:, split:])


@dataclass
class TransformerOutput:
    query: torch.Tensor             # refined query features [B*Tq, C, h, w]
    query_logits: list[torch.Tensor]    # 10 maps [B,Tq,h,w]: clip, frame, clip, frame, ...
    support_logits: list[torch.Tensor]  # 5 maps [B,Ts,h,w]
    cross_video_logits: torch.Tensor    # [B, iterations*(B-1), Tq, h, w]


class VIPMTTransformer(nn.Module):
    """Five iterations of clip / memory / frame prototype learning (docs/model.md, "The transformer")."""

    def __init__(self, dim: int = 384, num_layers: int = 5, ffn_ratio: int = 3, dropout: float = 0.1):
        super().__init__()
        hidden = ffn_ratio * dim

        def stack(make):
            return nn.ModuleList(make() for _ in range(num_layers))

        self.num_layers = num_layers
        self.level_embed = nn.Parameter(torch.zeros(1, dim))
        self.query_decoder_cross_attention_layers = stack(lambda: PrototypeCrossAttention(dim, dropout))
        self.support_memory_decoder_cross_attention_layers = stack(lambda: PrototypeCrossAttention(dim, dropout))
        self.query_decoder_cross_attention_layers_frame = stack(lambda: PrototypeCrossAttention(dim, dropout))
        self.query_layer_norms = stack(lambda: nn.LayerNorm(dim))
        self.support_memory_layer_norms = stack(lambda: nn.LayerNorm(dim))
        self.query_layer_norms_frame = stack(lambda: nn.LayerNorm(dim))
        self.query_ffns = stack(lambda: FFN(dim, hidden, dropout))
        self.support_memory_ffns = stack(lambda: FFN(dim, hidden, dropout))
        self.query_ffns_frame = stack(lambda: FFN(dim, hidden, dropout))
        self.query_layer_norms1 = stack(lambda: nn.LayerNorm(dim))
        self.support_memory_layer_norms1 = stack(lambda: nn.LayerNorm(dim))
        self.query_layer_norms1_frame = stack(lambda: nn.LayerNorm(dim))
        self.update_q = stack(lambda: conv_relu(2 * dim, dim, 1))
        self.res_q = stack(lambda: residual_block(dim))
        self.qry_self_layers = stack(lambda: SpatialReductionAttention(dim, dropout))
        self.self_attn_drop = nn.Dropout(dropout)
        self.layer_norms_q1 = stack(lambda: nn.LayerNorm(dim))
        self.ffns_q = stack(lambda: FFN(dim, hidden, dropout))
        self.layer_norms_q2 = stack(lambda: nn.LayerNorm(dim))
        self.mask_embed_clip = FFN(dim, dim, dropout)
        self.decoder_norm_clip = nn.LayerNorm(dim)
        self.mask_embed_frame = FFN(dim, dim, dropout)
        self.decoder_norm_frame = nn.LayerNorm(dim)
        self.prototype = nn.Embedding(1, dim)

    def position_encoding(self, ignore: torch.Tensor) -> torch.Tensor:
        """ignore [N,h,w] bool -> positional tokens [N, hw, C] (sine encoding + level embedding)."""
        pos = sine_position_encoding(ignore, self.level_embed.shape[1])
        return rearrange(pos, "n c h w -> n (h w) c") + self.level_embed[0]

    def _support_memory_prototypes(self, layer: int, prototype, support, memory):
        """Cross attention to supports (+ memory, sharing one softmax), then LN / FFN / LN."""
        sets = [support] if memory is None else [support, memory]
        attended = self.support_memory_decoder_cross_attention_layers[layer](
            prototype, [tokens for tokens, _ in sets], [mask for _, mask in sets])

        def refine(x):
            return self.support_memory_layer_norms1[layer](self.support_memory_ffns[layer](
                self.support_memory_layer_norms[layer](x + prototype)))

        return [refine(x) for x in attended]

    def _query_prototype(self, layer: int, prototype, query, query_mask):
        attended, = self.query_decoder_cross_attention_layers[layer](prototype, [query], [query_mask])
        return self.query_layer_norms1[layer](self.query_ffns[layer](self.query_layer_norms[layer](attended + prototype)))

    def _frame_prototype(self, layer: int, prototype, frame_tokens, frame_mask):
        attended, = self.query_decoder_cross_attention_layers_frame[layer](prototype, [frame_tokens], [frame_mask])
        refined = self.query_layer_norms1_frame[layer](self.query_ffns_frame[layer](
            self.query_layer_norms_frame[layer](attended + prototype)))
        return refined + prototype

    def _update_query(self, layer: int, query_map, frame_embedding, position, size):
        """query_map [N,C,h,w], frame_embedding [N,1,C], position [N,hw,C] -> tokens [N,hw,C]."""
        x = conv1x1_with_constants(self.update_q[layer], [query_map, frame_embedding[:, 0]])
        x = x + self.res_q[layer](x)
        tokens = rearrange(x, "n c h w -> n (h w) c")
        tokens = tokens + self.self_attn_drop(self.qry_self_layers[layer](tokens + position, size))
        return self.layer_norms_q2[layer](self.ffns_q[layer](self.layer_norms_q1[layer](tokens)))

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor,
                adjusted_query: torch.Tensor, init_mask: torch.Tensor, ignore: torch.Tensor,
                shots: int | None = None) -> TransformerOutput:
        """Refine prototypes and query features.

        query [B,Tq,C,h,w] merged query features; support [B,Ts,C,h,w] merged support features;
        support_mask [B,Ts,h,w] bool (already made non-degenerate); adjusted_query [B,Tq,C,h,w]
        (the reduced layer2+3 features, for the cross-video maps); init_mask [B,Tq,h,w];
        ignore [B,Tq,h,w] bool. The first `shots` support frames are the annotated supports (the
        support branch; None: the authors' min(Ts, 5)), the other Ts - shots frames memory (the
        memory branch). As the authors':
        5 supports and no memory frame -> no memory branch; fewer supports and no memory frame
        -> an empty memory branch (`support_memory_split`).
        """
        batch, frames, _, h, w = query.shape
        size = (h, w)
        query_tokens = rearrange(query, "b t c h w -> b (t h w) c")
        support_tokens = rearrange(support, "b s c h w -> b (s h w) c")
        shots = min(support.shape[1], AUTHORS_SHOTS) if shots is None else shots
        supports, memory = support_memory_split(support_tokens, rearrange(support_mask, "b s h w -> b (s h w)"),
                                                shots, support.shape[1])
        adjusted_tokens = rearrange(adjusted_query, "b t c h w -> b (t h w) c")
        position = self.position_encoding(rearrange(ignore, "b t h w -> (b t) h w"))
        query_mask = rearrange(init_mask, "b t h w -> b (t h w)") > 0
        prototype = repeat(self.prototype.weight, "1 c -> b 1 c", b=batch)

        query_logits, support_logits, cross_video = [], [], []
        for layer in range(self.num_layers):
            prototypes = self._support_memory_prototypes(layer, prototype, supports, memory)
            clip = self._query_prototype(layer, prototype, query_tokens, query_mask) + prototype + sum(prototypes)

            clip = self.mask_embed_clip(self.decoder_norm_clip(clip))                  # [B,1,C]
            clip_logits = torch.einsum("bpc,blc->bl", clip, query_tokens)
            query_logits.append(rearrange(clip_logits, "b (t h w) -> b t h w", t=frames, h=h))
            support_logits.append(rearrange(torch.einsum("bpc,blc->bl", clip, support_tokens),
                                            "b (s h w) -> b s h w", h=h, w=w))
            query_mask = (clip_logits.sigmoid() >= 0.5).detach()
            cross_video.append(self.cross_video_logits(adjusted_tokens, clip))

            frame_tokens = rearrange(query_tokens, "b (t n) c -> (b t) n c", t=frames)
            frame_mask = rearrange(query_mask, "b (t n) -> (b t) n", t=frames)
            frame = self._frame_prototype(layer, repeat(clip, "b 1 c -> (b t) 1 c", t=frames),
                                          frame_tokens, frame_mask)
            frame = self.mask_embed_frame(self.decoder_norm_frame(frame))              # [B*Tq,1,C]
            frame_logits = torch.einsum("npc,nlc->nl", frame, frame_tokens)
            query_logits.append(rearrange(frame_logits, "(b t) (h w) -> b t h w", b=batch, h=h))
            query_mask = rearrange(frame_logits.sigmoid() >= 0.5, "(b t) n -> b (t n)", b=batch).detach()

            query_map = rearrange(frame_tokens, "n (h w) c -> n c h w", h=h)
            query_tokens = rearrange(self._update_query(layer, query_map, frame, position, size),
                                     "(b t) n c -> b (t n) c", b=batch)
            prototype = rearrange(frame, "(b t) 1 c -> b t c", b=batch).mean(dim=1, keepdim=True)

        return TransformerOutput(
            query=rearrange(query_tokens, "b (t h w) c -> (b t) c h w", t=frames, h=h),
            query_logits=query_logits,
            support_logits=support_logits,
            cross_video_logits=rearrange(torch.cat(cross_video, dim=1), "b k (t h w) -> b k t h w", t=frames, h=h),
        )

    @staticmethod
    def cross_video_logits(adjusted_tokens: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """Dot products of each sample's query tokens with every OTHER sample's clip prototype.

        adjusted_tokens [B,L,C], clip [B,1,C] -> [B, B-1, L] (others in batch order).
        """
        batch = adjusted_tokens.shape[0]
        all_pairs = torch.einsum("blc,kc->bkl", adjusted_tokens, clip[:, 0])          # [B,B,L]
        others = ~torch.eye(batch, dtype=torch.bool, device=clip.device)
        return all_pairs[others].view(batch, batch - 1, adjusted_tokens.shape[1])
