"""VIPMT: multi-grained temporal prototype learning for few-shot video object segmentation.

`VIPMT.forward` reads like the paper: backbone features -> support prototypes and prior ->
initial mask -> transformer iterations (clip, memory and frame prototypes) -> output and score
heads -> (training) losses. Each step is a method that training, evaluation and the video
inference engine (`models.engine`) compose.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from config import DEFAULTS, check_image_size

from .backbone import Backbone
from .errors import ModelError
from .heads import BoxUpsampler, ScoreHead, classifier
from .losses import (AUX_QUERY_WEIGHT, AUX_SUPPORT_WEIGHT, FINAL_WEIGHT, INITIAL_WEIGHT, LossWeights,
                     contrast_loss, mean_bce, score_loss, segmentation_loss)
from .prototypes import (ChannelPool, masked_average_pool, object_mask, pfe_mask, prior_map,
                         resize_mask_nearest, support_similarity)
from .transformer import (AUTHORS_SHOTS, IGNORE_LABEL, VIPMTTransformer, conv1x1_with_constants, conv_relu,
                          residual_block)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BACKBONE_WEIGHTS = REPO_ROOT / "pretrain_model" / "resnet50_v2.pth"
DEFAULT_IMAGE_SIZE = tuple(DEFAULTS.image_size)
FEATURE_DIM = 384
REDUCE_DROPOUT = 0.5
SHOTS = AUTHORS_SHOTS      # the most annotated supports; without `shots`, support frames beyond 5 are memory

Features = dict  # {'0'..'3': [B,T,C_k,h_k,w_k]} backbone features of a set of frames


@dataclass
class ClipPrediction:
    """Everything one forward pass over a query clip produces (shapes with B, Tq, h, w, H, W)."""
    logits: torch.Tensor            # final class logits [B,Tq,2,h,w]
    full_logits: torch.Tensor       # the final logits upsampled to the image size [B,Tq,2,H,W]
    init_logits: torch.Tensor       # initial class logits [B,Tq,2,h,w]
    pred: torch.Tensor              # int64 [B,Tq,H,W]
    score: torch.Tensor             # predicted IoU [B,Tq]
    query_tokens: torch.Tensor      # channel-pooled layer4 tokens [B,Tq,hw,c] (reused for memory frames)
    query_logits: list              # transformer query maps, 10 x [B,Tq,h,w]
    support_logits: list            # transformer support maps, 5 x [B,Ts,h,w]
    cross_video_logits: torch.Tensor  # [B, 5*(B-1), Tq, h, w]


@dataclass
class SupportEncoding:
    """Per-frame support information (B samples, Ts frames); concatenable along frames.

    The first `shots` frames are annotated supports (the transformer's support branch), the rest
    memory frames (its memory branch); `shots=None` means every frame is an annotated support.
    """
    object: torch.Tensor        # 0/1 object mask at feature size [B,Ts,1,h,w]
    prototypes: torch.Tensor    # masked-average-pooled frame prototypes [B,Ts,C,1,1]
    features: torch.Tensor      # merged support features [B,Ts,C,h,w] (transformer tokens)
    tokens: torch.Tensor        # channel-pooled layer4 tokens [B,Ts,hw,c] (prior, PFE mask)
    shots: int | None = None    # leading annotated frames; the other Ts - shots are memory frames

    @property
    def num_shots(self) -> int:
        return self.object.shape[1] if self.shots is None else self.shots

    @staticmethod
    def _tensor_names() -> list[str]:
        return [f.name for f in fields(SupportEncoding) if f.name != "shots"]

    @staticmethod
    def cat(parts: list["SupportEncoding"]) -> "SupportEncoding":
        """Concatenate along frames; annotated frames must come first (supports, then memory)."""
        shots, seen_memory = 0, False
        for part in parts:
            if part.num_shots and seen_memory:
                raise ModelError("SupportEncoding.cat: annotated supports must come before memory frames")
            shots += part.num_shots
            seen_memory = seen_memory or part.num_shots < part.object.shape[1]
        return SupportEncoding(*(torch.cat([getattr(p, name) for p in parts], dim=1)
                                 for name in SupportEncoding._tensor_names()), shots=shots)

    def select(self, index: list) -> "SupportEncoding":
        """Pick frames along Ts (annotated frames first, as `cat`)."""
        annotated = [i < self.num_shots for i in index]
        if annotated != sorted(annotated, reverse=True):
            raise ModelError("SupportEncoding.select: annotated supports must come before memory frames")
        return SupportEncoding(*(getattr(self, name)[:, index] for name in self._tensor_names()), shots=sum(annotated))


def _is_features(x) -> bool:
    return isinstance(x, Mapping)


class VIPMT(nn.Module):
    """The VIPMT network with reference parameter names (see tests/fixtures/state_dict_keys.tsv).

    Args:
        backbone_weights: path of the deep-stem ResNet-50 ImageNet weights, or None for a
            randomly initialised backbone (no file is touched).
        image_size: (H, W) the model is built for; both divisible by 8. The score head's
            fully connected layer depends on it.
        loss_weights: weights of the main / aux / contrast / score loss terms.
    """

    def __init__(self, backbone_weights: str | Path | None = DEFAULT_BACKBONE_WEIGHTS,
                 image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, loss_weights: LossWeights | None = None):
        super().__init__()
        self.image_size = check_image_size(image_size, error=ModelError)
        dim = FEATURE_DIM
        multi_level = 512 + 1024  # layer2 + layer3
        # Modules are registered in the reference order, so that state dicts and the optimiser's
        # parameter list (train.py: every parameter that requires grad) follow the authors' order.
        self.adjust_feature_supp = self._reduce_block(multi_level, dim)
        self.adjust_feature_qry = self._reduce_block(multi_level, dim)
        self.qry_merge_feat = conv_relu(2 * dim + 1, dim, 1)      # features, global prototype, prior
        self.supp_merge_feat = conv_relu(2 * dim, dim, 1)         # features, frame prototype
        self.transformer = VIPMTTransformer(dim)
        self.merge_multi_lvl_reduce = conv_relu(dim, dim, 1)
        self.merge_multi_lvl_sum = residual_block(dim)
        self.merge_res = residual_block(dim)
        self.ini_cls = classifier(dim)
        self.cls = classifier(dim)
        self.score_head = ScoreHead(self.image_size)
        self.backbone = Backbone(None if backbone_weights is None else str(backbone_weights))
        self.upsample1 = BoxUpsampler()     # trained, like every non-backbone weight
        self.upsample2 = BoxUpsampler()
        self.channel_pool = ChannelPool()
        self.loss_weights = loss_weights or LossWeights()

    @staticmethod
    def _reduce_block(in_ch: int, out_ch: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.ReLU(inplace=True),
                             nn.Dropout2d(REDUCE_DROPOUT))

    # ------------------------------------------------------------------ named steps
    def extract_features(self, images: torch.Tensor) -> Features:
        """images [B,T,3,H,W] -> detached backbone features {'0'..'3': [B,T,C_k,h_k,w_k]}."""
        batch = images.shape[0]
        with torch.no_grad():
            levels = self.backbone(rearrange(images, "b t c h w -> (b t) c h w"))
        return {k: rearrange(v, "(b t) c h w -> b t c h w", b=batch) for k, v in levels.items()}

    def reduce_features(self, features: Features, block: nn.Module) -> torch.Tensor:
        """cat(layer2, layer3) -> 1x1 conv to 384. features [B,T,...] -> [B,T,384,h,w]."""
        levels = [rearrange(features[k], "b t c h w -> (b t) c h w") for k in ("1", "2")]
        weights = block[0].weight.split([x.shape[1] for x in levels], dim=1)
        # The 1x1 conv of cat(a, b) as conv_a(a) + conv_b(b): no 1536-channel copy (58 -> 45 ms, 5 frames).
        x = block[1:](F.conv2d(levels[0], weights[0]) + F.conv2d(levels[1], weights[1]))
        return rearrange(x, "(b t) c h w -> b t c h w", b=features["1"].shape[0])

    def pooled_tokens(self, features: Features) -> torch.Tensor:
        """Channel-pooled layer4 tokens for the prior and PFE mask: [B,T,hw,384]."""
        batch = features["3"].shape[0]
        with torch.no_grad():
            tokens = self.channel_pool(rearrange(features["3"], "b t c h w -> (b t) c h w").float())
        return rearrange(tokens, "(b t) n c -> b t n c", b=batch)

    @staticmethod
    def frame_prototypes(support: torch.Tensor, support_object: torch.Tensor) -> torch.Tensor:
        """Masked average pooling of each frame. support [B,Ts,C,h,w], support_object [B,Ts,1,h,w]
        -> [B,Ts,C,1,1]. Their mean over all frames (memory included) is the global prototype."""
        batch = support.shape[0]
        pooled = masked_average_pool(rearrange(support, "b s c h w -> (b s) c h w"),
                                     rearrange(support_object, "b s 1 h w -> (b s) 1 h w"))
        return rearrange(pooled, "(b s) c 1 1 -> b s c 1 1", b=batch)

    def merge_query(self, query: torch.Tensor, global_prototype: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """query [B,Tq,C,h,w], global_prototype [B,C,1,1], prior [B,Tq,1,h,w] -> [B,Tq,C,h,w]."""
        batch, frames = query.shape[:2]
        parts = [rearrange(query, "b t c h w -> (b t) c h w"),
                 repeat(global_prototype, "b c 1 1 -> (b t) c", t=frames),      # constant over positions
                 rearrange(prior, "b t 1 h w -> (b t) 1 h w")]
        return rearrange(conv1x1_with_constants(self.qry_merge_feat, parts), "(b t) c h w -> b t c h w", b=batch)

    def initial_logits(self, merged_query: torch.Tensor) -> torch.Tensor:
        """Residual refinement then the initial classifier. [B,Tq,C,h,w] -> logits [B,Tq,2,h,w].

        (The transformer reads the merged features before this refinement.)"""
        batch = merged_query.shape[0]
        x = rearrange(merged_query, "b t c h w -> (b t) c h w")
        x = self.ini_cls(x + self.merge_res(x))
        return rearrange(x, "(b t) k h w -> b t k h w", b=batch)

    def merge_support(self, support: torch.Tensor, frame_prototypes: torch.Tensor) -> torch.Tensor:
        """support [B,Ts,C,h,w], frame_prototypes [B,Ts,C,1,1] -> [B,Ts,C,h,w]."""
        batch = support.shape[0]
        parts = [rearrange(support, "b s c h w -> (b s) c h w"),
                 rearrange(frame_prototypes, "b s c 1 1 -> (b s) c")]                # constant over positions
        return rearrange(conv1x1_with_constants(self.supp_merge_feat, parts), "(b s) c h w -> b s c h w", b=batch)

    def output_logits(self, refined_query: torch.Tensor, batch: int) -> torch.Tensor:
        """Output head on the transformer's query features [B*Tq,C,h,w] -> logits [B,Tq,2,h,w]."""
        x = self.merge_multi_lvl_reduce(refined_query)
        x = x + self.merge_multi_lvl_sum(x)
        return rearrange(self.cls(x), "(b t) k h w -> b t k h w", b=batch)

    def upsample(self, upsampler: BoxUpsampler, logits: torch.Tensor) -> torch.Tensor:
        """logits [B,T,2,h,w] -> [B,T,2,8h,8w]."""
        batch = logits.shape[0]
        return rearrange(upsampler(rearrange(logits, "b t k h w -> (b t) k h w")), "(b t) k h w -> b t k h w", b=batch)

    def score(self, query_features: Features, query_tokens: torch.Tensor, query_object: torch.Tensor,
              similarity: torch.Tensor) -> torch.Tensor:
        """Predicted IoU of each query frame.

        query_features {'0'..'3'} [B,Tq,...]; query_tokens [B,Tq,hw,c] pooled layer4;
        query_object [B,Tq,h,w] the predicted mask at feature size (argmax of the final logits
        before upsampling); similarity [B,Ts,Tq*hw] (`support_similarity`) -> [B,Tq].
        """
        batch, frames, _, h, w = query_features["3"].shape
        query_object = rearrange(query_object, "b t h w -> b t (h w)").float()
        pfe = pfe_mask(query_tokens, query_object, similarity)
        pfe = rearrange(pfe, "b t k (h w) -> (b t) k h w", h=h)
        levels = {k: rearrange(v, "b t c h w -> (b t) c h w") for k, v in query_features.items()}
        return rearrange(self.score_head(levels, pfe.to(levels["3"].dtype)), "(b t) -> b t", b=batch)

    # ------------------------------------------------------------------ composition
    def encode_support(self, support_features: Features, support_mask: torch.Tensor,
                       tokens: torch.Tensor | None = None, shots: int | None = None) -> "SupportEncoding":
        """Everything the model derives from each support (or memory) frame on its own.

        support_features [B,Ts,...] backbone features, support_mask [B,Ts,1,H,W] 0/1, tokens
        [B,Ts,hw,c] the frames' pooled layer4 tokens if already computed (memory frames); shots:
        how many leading frames are annotated supports (None: all, 0: memory frames only). The
        result is per frame, so encodings of different frames can be concatenated
        (`SupportEncoding.cat`): the video engine encodes supports once and each memory frame once.
        """
        frames = support_mask.shape[1]
        shots = frames if shots is None else shots
        if not 0 <= shots <= min(frames, SHOTS):
            raise ModelError(f"{shots} annotated support frame(s) given: the model takes 1 to {SHOTS} "
                             f"(and memory frames: shots=0)")
        size = tuple(support_features["3"].shape[-2:])
        support_object = object_mask(support_mask, size)                           # [B,Ts,1,h,w]
        reduced = self.reduce_features(support_features, self.adjust_feature_supp)
        frame_prototypes = self.frame_prototypes(reduced, support_object)
        return SupportEncoding(object=support_object, prototypes=frame_prototypes,
                               features=self.merge_support(reduced, frame_prototypes),
                               tokens=self.pooled_tokens(support_features) if tokens is None else tokens,
                               shots=shots)

    def predict_clip(self, query_features: Features, support: "SupportEncoding | Features",
                     support_mask: torch.Tensor | None = None,
                     query_mask: torch.Tensor | None = None, shots: int | None = None) -> ClipPrediction:
        """One query clip against its supports (and memory frames), from backbone features.

        query_features [B,Tq,...] (see `extract_features`); support: backbone features
        [B,Ts,...] together with support_mask [B,Ts,1,H,W] (the first `shots` frames annotated
        supports, the rest memory; `shots=None`: the authors' rule, min(Ts, 5)), or an already
        computed `SupportEncoding` (which knows its shots); query_mask [B,Tq,1,H,W] or None (only
        its 255 "ignore" pixels are read here, for the positional encoding).
        """
        if not isinstance(support, SupportEncoding):
            support = self.encode_support(support, support_mask,
                                          shots=check_shots(shots, support["3"].shape[1]))
        batch, frames, _, h, w = query_features["3"].shape
        size = (h, w)
        query = self.reduce_features(query_features, self.adjust_feature_qry)
        query_tokens = self.pooled_tokens(query_features)
        similarity = support_similarity(query_tokens, support.tokens,
                                        rearrange(support.object, "b s 1 h w -> b s (h w)"))
        prior = rearrange(prior_map(similarity, frames), "b t (h w) -> b t 1 h w", h=h).to(query.dtype)

        merged_query = self.merge_query(query, support.prototypes.mean(dim=1), prior)
        init_logits = self.initial_logits(merged_query)
        init_mask = init_logits.argmax(dim=2)                                       # [B,Tq,h,w] int64

        if query_mask is None:
            ignore = torch.zeros(batch, frames, h, w, dtype=torch.bool, device=query.device)
        else:
            ignore = resize_mask_nearest(query_mask, size)[:, :, 0] == IGNORE_LABEL
        refined = self.transformer(merged_query, support.features, attention_support_mask(support.object),
                                   query, init_mask, ignore, shots=support.num_shots)

        logits = self.output_logits(refined.query, batch)
        full_logits = self.upsample(self.upsample1, logits)
        pred = full_logits.argmax(dim=2)
        score = self.score(query_features, query_tokens, logits.argmax(dim=2), similarity)
        return ClipPrediction(logits=logits, full_logits=full_logits, init_logits=init_logits, pred=pred, score=score,
                              query_tokens=query_tokens, query_logits=refined.query_logits,
                              support_logits=refined.support_logits, cross_video_logits=refined.cross_video_logits)

    def losses(self, clip: ClipPrediction, query_mask: torch.Tensor, support_mask: torch.Tensor) -> dict:
        """The four per-clip loss terms (docs/model.md, "Losses"). query_mask [B,Tq,1,H,W], support_mask [B,Ts,1,H,W]."""
        batch = query_mask.shape[0]
        size = clip.logits.shape[-2:]
        target = rearrange(query_mask == 1, "b t 1 h w -> (b t) h w")
        # The final logits were upsampled for the prediction already (and keep their graph in training).
        main = sum(weight * segmentation_loss(full_logits.flatten(0, 1), target, batch)
                   for weight, full_logits in ((FINAL_WEIGHT, clip.full_logits),
                                               (INITIAL_WEIGHT, self.upsample(self.upsample2, clip.init_logits))))
        query_small = object_mask(query_mask, size)[:, :, 0]
        support_small = object_mask(support_mask, size)[:, :, 0]
        aux = (AUX_QUERY_WEIGHT * mean_bce(clip.query_logits, query_small)
               + AUX_SUPPORT_WEIGHT * mean_bce(clip.support_logits, support_small))
        return {
            "main_loss": main,
            "aux_loss": aux,
            "contrast_loss": contrast_loss(clip.cross_video_logits, query_small),
            "score_loss": score_loss(clip.score, clip.pred, query_mask[:, :, 0] == 1),
        }

    def forward(self, query_img: torch.Tensor, query_mask: torch.Tensor | None,
                support_img: torch.Tensor | Features, support_mask: torch.Tensor, shots: int | None = None):
        """query_img [B,Tq,3,H,W]; query_mask [B,Tq,1,H,W] (None allowed in eval);
        support_img [B,Ts,3,H,W] images, or their backbone features (training clips 2 and 3);
        support_mask [B,Ts,1,H,W]; shots: how many leading support frames are annotated supports
        (1-5; the others are memory frames); None = the authors' rule: the first min(Ts, 5).

        eval: returns (pred [B,Tq,H,W] int64, score [B,Tq]).
        train: returns a dict with 'pred', 'main_loss', 'aux_loss', 'contrast_loss',
        'score_loss', 'loss' (weighted total) and the detached 'query_features' /
        'support_features' for feature reuse.
        """
        check_inputs(self.image_size, query_img, query_mask, support_img, support_mask, self.training)
        shots = check_shots(shots, support_mask.shape[1])
        query_features = self.extract_features(query_img)
        support_features = support_img if _is_features(support_img) else self.extract_features(support_img)
        clip = self.predict_clip(query_features, support_features, support_mask, query_mask, shots=shots)
        if not self.training:
            return clip.pred, clip.score
        terms = self.losses(clip, query_mask, support_mask)
        return {"pred": clip.pred, **terms, "loss": self.loss_weights.total(terms),
                "query_features": query_features, "support_features": support_features}


def attention_support_mask(support_object: torch.Tensor) -> torch.Tensor:
    """Support object masks for attention, never empty or full. [B,Ts,1,h,w] -> bool [B,Ts,h,w].

    An empty mask gets the central 2x2 block, a full one loses its four corners, so that each
    support frame has both attended and ignored positions.
    """
    mask = support_object[:, :, 0] > 0
    h, w = mask.shape[-2:]
    empty = ~mask.flatten(2).any(-1)
    full = mask.flatten(2).all(-1)
    mask = mask.clone()
    mask[..., h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] |= empty[..., None, None]
    corners = (slice(None), slice(None), [0, 0, -1, -1], [0, -1, 0, -1])
    mask[corners] &= ~full[..., None]
    return mask


def check_shots(shots: int | None, support_frames: int) -> int:
    """The number of annotated supports among `support_frames` frames: `shots`, checked, or the
    authors' rule min(Ts, 5) when None. ModelError for a number out of 1..min(Ts, 5)."""
    if shots is None:
        return min(support_frames, SHOTS)
    if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= min(support_frames, SHOTS):
        raise ModelError(f"shots={shots!r}: expected the number of annotated supports, 1 to {SHOTS} and at most "
                         f"the {support_frames} support frame(s) given (the others are memory frames)")
    return shots


def check_inputs(image_size, query_img, query_mask, support_img, support_mask, training: bool) -> None:
    """One clear error for inputs the model cannot take."""
    if query_img.dim() != 5 or query_img.shape[2] != 3:
        raise ModelError(f"query_img must be [B,Tq,3,H,W], got {tuple(query_img.shape)}")
    batch, frames = query_img.shape[:2]
    if tuple(query_img.shape[-2:]) != tuple(image_size):
        raise ModelError(f"query images are {query_img.shape[-2]}x{query_img.shape[-1]} but the model was built "
                         f"for {image_size[0]}x{image_size[1]} (VIPMT(image_size=...))")
    if query_mask is None and training:
        raise ModelError("training needs query_mask [B,Tq,1,H,W]")
    if query_mask is not None and tuple(query_mask.shape) != (batch, frames, 1, *image_size):
        raise ModelError(f"query_mask must be {[batch, frames, 1, *image_size]}, got {list(query_mask.shape)}")
    support_frames = (support_img["3"] if _is_features(support_img) else support_img).shape[1]
    if support_frames < 1:
        raise ModelError("at least one support frame is needed")
    if not _is_features(support_img) and tuple(support_img.shape) != (batch, support_frames, 3, *image_size):
        raise ModelError(f"support_img must be [B,Ts,3,H,W] = {[batch, support_frames, 3, *image_size]}, "
                         f"got {list(support_img.shape)}")
    if tuple(support_mask.shape) != (batch, support_frames, 1, *image_size):
        raise ModelError(f"support_mask must be {[batch, support_frames, 1, *image_size]}, got {list(support_mask.shape)}")
