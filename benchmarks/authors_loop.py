"""The authors' computation pattern, rebuilt from its description (docs/model.md) for side-by-side timing.

`VIPMT` computes the same numbers as the reference with cheaper arithmetic (see
models/prototypes.py and models/transformer.py). To time our engine against the authors'
own test loop, `authors_computation()` temporarily swaps those steps for literal versions of
the authors' steps:

* prior: for every (query frame, support frame) pair, pool `layer4 * mask` again,
  a full (hw x hw) cosine map, max, min-max normalise, appended to a list never reset;
* PFE mask: full cosine maps of the pooled query background / object features against
  every support position and against each other;
* prototype cross attention: key and value projections applied to every token;
* update_q, the query merge and the support merge: the constant parts (frame embedding, global
  prototype, frame prototypes) broadcast over positions and concatenated before the 1x1 conv;
* layer2+3 reduction and the score head's first fuse conv: one convolution of the full
  concatenation (1536 and 3840 channels; in training the backward then also computes the
  gradient of the backbone channels, which nothing reads);
* backbone: torchvision's modules one after the other (a separate frozen-norm pass after each
  conv, default memory format) instead of folded norms in channels-last format.

With it, `segment_video_recompute` (benchmarks/recompute.py) runs the authors' protocol with the authors'
arithmetic, and `models.episode.train_episode` the authors' training step (benchmarks/train_step_speed.py).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from models import backbone, heads, prototypes, transformer, vipmt
from models.prototypes import COSINE_EPS, ChannelPool

_pool = ChannelPool()


def _pool_map(feature: torch.Tensor) -> torch.Tensor:
    """[2048,h,w] -> [hw,384] channel-pooled tokens."""
    return _pool(feature[None])[0]


def _cosine_map(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Full cosine matrix [R,M] between row tokens [R,c] and column tokens [M,c]."""
    dots = rows @ columns.T
    norms = rows.norm(dim=1, keepdim=True) @ columns.norm(dim=1, keepdim=True).T
    return dots / (norms + COSINE_EPS)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + COSINE_EPS)


def literal_prior(query_l4: torch.Tensor, support_l4: torch.Tensor, support_object: torch.Tensor) -> torch.Tensor:
    """query_l4 [B,Tq,2048,h,w], support_l4 [B,Ts,2048,h,w], support_object [B,Ts,1,h,w] -> [B,Tq,1,h,w]."""
    batch, frames, _, h, w = query_l4.shape
    out = query_l4.new_zeros(batch, frames, 1, h, w)
    for b in range(batch):
        maps = []                                          # never reset between query frames
        for t in range(frames):
            for s in range(support_l4.shape[1]):
                support = _pool_map(support_l4[b, s] * support_object[b, s])
                query = _pool_map(query_l4[b, t])
                maps.append(_normalise(_cosine_map(support, query).amax(dim=0)))
            out[b, t, 0] = torch.stack(maps).mean(dim=0).view(h, w)
    return out


def literal_pfe(query_l4: torch.Tensor, query_object: torch.Tensor, support_l4: torch.Tensor,
                support_object: torch.Tensor) -> torch.Tensor:
    """query_l4 [B,Tq,2048,h,w], query_object [B,Tq,h,w], support_l4 [B,Ts,2048,h,w],
    support_object [B,Ts,1,h,w] -> [B,Tq,5,h,w]."""
    batch, frames, _, h, w = query_l4.shape
    out = query_l4.new_zeros(batch, frames, 5, h * w)
    for b in range(batch):
        for t in range(frames):
            mask = query_object[b, t].float()
            background = _pool_map(query_l4[b, t] * (1 - mask))
            foreground = _pool_map(query_l4[b, t] * mask)
            supports = torch.cat([_pool_map(support_l4[b, s] * support_object[b, s])
                                  for s in range(support_l4.shape[1])])
            grid = _cosine_map(background, foreground)
            out[b, t, 0] = mask.flatten()
            out[b, t, 1] = _normalise(_cosine_map(supports, background).amax(dim=0))
            out[b, t, 2] = _normalise(_cosine_map(supports, foreground).amax(dim=0))
            out[b, t, 3] = _normalise(grid.amax(dim=0))
            out[b, t, 4] = _normalise(grid.amax(dim=1))
    return rearrange(out, "b t k (h w) -> b t k h w", h=h)


def _token_side_attention(self, prototype, token_sets, masks):
    """PrototypeCrossAttention.forward with the projections applied to the tokens."""
    query = self.q_fc(prototype)
    keys = [self.k_fc(tokens) for tokens in token_sets]
    values = [self.v_fc(tokens) for tokens in token_sets]
    logits = [(query @ k.transpose(1, 2)) * self.scale + (~mask).to(query.dtype).unsqueeze(1) * transformer.MASK_PENALTY
              for k, mask in zip(keys, masks)]
    weights = self.attn_drop(torch.cat(logits, dim=2).softmax(dim=2))
    outputs, start = [], 0
    for v in values:
        outputs.append(self.proj_drop(self.proj(weights[:, :, start:start + v.shape[1]] @ v)))
        start += v.shape[1]
    return outputs


def _module_by_module(self, images):
    """Backbone.forward as the reference runs it: each torchvision module in turn."""
    x, levels = images, OrderedDict()
    for name, module in self.body.named_children():
        x = module(x)
        if name in backbone.RETURN_LAYERS:
            levels[backbone.RETURN_LAYERS[name]] = x
    return levels


def _concatenated_conv1x1(block, parts):
    """conv1x1_with_constants as the reference computes it: constants broadcast, then one conv."""
    h, w = next(part for part in parts if part.dim() == 4).shape[-2:]
    return block(torch.cat([part if part.dim() == 4 else repeat(part, "n c -> n c h w", h=h, w=w)
                            for part in parts], dim=1))


def _concatenated_reduce(self, features, block):
    """VIPMT.reduce_features as the reference computes it: cat(layer2, layer3), one 1x1 conv."""
    x = torch.cat([rearrange(features[k], "b t c h w -> (b t) c h w") for k in ("1", "2")], dim=1)
    return rearrange(block(x), "(b t) c h w -> b t c h w", b=features["1"].shape[0])


def _concatenated_merge_support(self, support, frame_prototypes):
    """VIPMT.merge_support as the reference computes it: prototypes broadcast and concatenated."""
    batch, _, _, h, w = support.shape
    x = torch.cat((support, frame_prototypes.expand(-1, -1, -1, h, w)), dim=2)
    return rearrange(self.supp_merge_feat(rearrange(x, "b s c h w -> (b s) c h w")), "(b s) c h w -> b s c h w",
                     b=batch)


def _concatenated_score_head(self, levels, pfe):
    """ScoreHead.forward as the reference computes it: one fuse conv over all 3840 channels."""
    x = F.relu(self.donw_samp(levels["0"]))
    x = torch.cat((x, levels["1"], levels["2"], levels["3"]), dim=1)
    x = torch.cat((F.relu(self.fuse_conv2(F.relu(self.fuse_conv1(x)))), pfe), dim=1)
    for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
        x = F.relu(conv(x))
    x = F.relu(self.fc1(rearrange(x, "n c h w -> n (c h w)")))
    return self.fc2(x).sigmoid().squeeze(1)


@contextlib.contextmanager
def authors_computation():
    """Run VIPMT with the authors' arithmetic (see the module docstring) inside the block."""
    saved = (vipmt.VIPMT.predict_clip, transformer.PrototypeCrossAttention.forward,
             transformer.conv1x1_with_constants, backbone.Backbone.forward, vipmt.VIPMT.reduce_features,
             vipmt.VIPMT.merge_support, heads.ScoreHead.forward)

    def predict_clip(model, query_features, support, support_mask=None, query_mask=None, shots=None):
        assert isinstance(support, dict), "the authors' loop encodes supports from backbone features"
        size = tuple(query_features["3"].shape[-2:])
        support_object = prototypes.object_mask(support_mask, size)

        def prior_map(similarity, frames):
            return rearrange(literal_prior(query_features["3"], support["3"], support_object),
                             "b t 1 h w -> b t (h w)")

        def pfe_mask(query_tokens, query_object, similarity):
            pfe = literal_pfe(query_features["3"], rearrange(query_object, "b t (h w) -> b t h w", h=size[0]),
                              support["3"], support_object)
            return rearrange(pfe, "b t k h w -> b t k (h w)")

        literal = {"support_similarity": lambda *args: None, "prior_map": prior_map, "pfe_mask": pfe_mask}
        originals = {name: getattr(vipmt, name) for name in literal}
        for name, function in literal.items():
            setattr(vipmt, name, function)
        try:
            return saved[0](model, query_features, support, support_mask, query_mask, shots=shots)
        finally:
            for name, function in originals.items():
                setattr(vipmt, name, function)

    vipmt.VIPMT.predict_clip = predict_clip
    transformer.PrototypeCrossAttention.forward = _token_side_attention
    transformer.conv1x1_with_constants = _concatenated_conv1x1
    vipmt.conv1x1_with_constants = _concatenated_conv1x1
    backbone.Backbone.forward = _module_by_module
    vipmt.VIPMT.reduce_features = _concatenated_reduce
    vipmt.VIPMT.merge_support = _concatenated_merge_support
    heads.ScoreHead.forward = _concatenated_score_head
    try:
        yield
    finally:
        (vipmt.VIPMT.predict_clip, transformer.PrototypeCrossAttention.forward,
         transformer.conv1x1_with_constants, backbone.Backbone.forward, vipmt.VIPMT.reduce_features,
         vipmt.VIPMT.merge_support, heads.ScoreHead.forward) = saved
        vipmt.conv1x1_with_constants = saved[2]
