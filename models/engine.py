"""Video inference: segment a whole query video clip by clip with reliable memory (docs/protocol.md, "Testing").

The authors' loop re-runs the backbone on the supports and on every memory frame for each
5-frame clip. `VideoSegmenter` computes each frame's backbone features once: the supports
are encoded once per video, and a query frame that turns out reliable (predicted score >=
threshold) is encoded as a memory frame right after its clip, from the features it already
has. `segment_video_recompute` keeps the authors' clip-by-clip protocol as the reference
path (tests and benchmarks compare the two).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .vipmt import VIPMT, SupportEncoding

CLIP_LENGTH = 5
MEMORY_THRESHOLD = 0.8
MEMORY_SIZE = 5


@dataclass
class VideoPrediction:
    pred: torch.Tensor      # [T,H,W] int64, 1 = object
    score: torch.Tensor     # [T] predicted IoU of each frame


def draw_memory(reliable: list, memory_size: int, generator: torch.Generator | None) -> list:
    """All reliable frames if they fit, else `memory_size` of them at random, in time order."""
    if len(reliable) <= memory_size:
        return list(reliable)
    picked = torch.randperm(len(reliable), generator=generator)[:memory_size].sort().values
    return [reliable[i] for i in picked.tolist()]


def _check_video(frames: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor) -> None:
    from .errors import ModelError
    if frames.dim() != 4 or support_img.dim() != 4 or support_mask.dim() != 4:
        raise ModelError(f"expected frames [T,3,H,W], support_img [S,3,H,W], support_mask [S,1,H,W]; got "
                         f"{list(frames.shape)}, {list(support_img.shape)}, {list(support_mask.shape)}")
    if len(frames) == 0:
        raise ModelError("the query video has no frames")


class VideoSegmenter:
    """Segments videos with a trained VIPMT, reusing every frame's backbone features.

    Args:
        model: a VIPMT (switched to eval mode here).
        clip_length: query frames per forward pass.
        memory_threshold: a frame whose predicted score is >= this becomes a memory candidate.
        memory_size: at most this many memory frames per clip (drawn at random, kept in order).
        use_memory: False segments every clip against the supports only.
        autocast_dtype: e.g. torch.bfloat16 for mixed precision on CUDA (None = float32).
    """

    def __init__(self, model: VIPMT, clip_length: int = CLIP_LENGTH, memory_threshold: float = MEMORY_THRESHOLD,
                 memory_size: int = MEMORY_SIZE, use_memory: bool = True,
                 autocast_dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.clip_length = clip_length
        self.memory_threshold = memory_threshold
        self.memory_size = memory_size
        self.use_memory = use_memory
        self.autocast_dtype = autocast_dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _features(self, images: torch.Tensor) -> dict:
        """images [T,3,H,W] -> backbone features {'k': [1,T,...]}."""
        return self.model.extract_features(images.to(self.device)[None])

    @torch.inference_mode()
    def segment(self, frames: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor,
                generator: torch.Generator | None = None, progress=None) -> VideoPrediction:
        """frames [T,3,H,W], support_img [S,3,H,W], support_mask [S,1,H,W] (normalised images,
        0/1 masks) -> VideoPrediction. `generator` draws memory frames when there are too many;
        `progress` (optional) is called with the number of frames finished after each clip."""
        _check_video(frames, support_img, support_mask)
        model = self.model
        with self._autocast():
            supports = model.encode_support(self._features(support_img), support_mask.to(self.device)[None])
            reliable: list[SupportEncoding] = []
            preds, scores = [], []
            for start in range(0, len(frames), self.clip_length):
                features = self._features(frames[start:start + self.clip_length])
                memory = draw_memory(reliable, self.memory_size, generator) if self.use_memory else []
                support = SupportEncoding.cat([supports, *memory]) if memory else supports
                clip = model.predict_clip(features, support)
                preds.append(clip.pred[0])
                scores.append(clip.score[0].float())
                later_clips = start + self.clip_length < len(frames)
                if self.use_memory and later_clips:
                    keep = (clip.score[0] >= self.memory_threshold).nonzero().flatten().tolist()
                    if keep:
                        kept = {k: v[:, keep] for k, v in features.items()}
                        encoded = model.encode_support(kept, clip.pred[:, keep, None],
                                                       tokens=clip.query_tokens[:, keep])
                        reliable.extend(encoded.select([i]) for i in range(len(keep)))
                if progress is not None:
                    progress(min(start + self.clip_length, len(frames)))
        return VideoPrediction(pred=torch.cat(preds).cpu(), score=torch.cat(scores).cpu())


@torch.inference_mode()
def segment_video_recompute(model: nn.Module, frames: torch.Tensor, support_img: torch.Tensor,
                            support_mask: torch.Tensor, generator: torch.Generator | None = None,
                            clip_length: int = CLIP_LENGTH, memory_threshold: float = MEMORY_THRESHOLD,
                            memory_size: int = MEMORY_SIZE, use_memory: bool = True) -> VideoPrediction:
    """The authors' protocol: every clip calls the model on images, supports and memory frames
    (with their predicted masks) re-encoded from scratch. Same arguments as `VideoSegmenter`."""
    _check_video(frames, support_img, support_mask)
    model.eval()
    device = next(model.parameters()).device
    frames, support_img, support_mask = frames.to(device), support_img.to(device), support_mask.to(device)
    reliable, preds, scores = [], [], []        # reliable: (image [3,H,W], predicted mask [1,H,W])
    for start in range(0, len(frames), clip_length):
        clip_frames = frames[start:start + clip_length]
        memory = draw_memory(reliable, memory_size, generator) if use_memory else []
        images = torch.cat([support_img, *(image[None] for image, _ in memory)])
        masks = torch.cat([support_mask, *(mask[None] for _, mask in memory)])
        pred, score = model(clip_frames[None], None, images[None], masks[None])
        preds.append(pred[0])
        scores.append(score[0])
        reliable.extend((clip_frames[i], pred[0, i, None].float()) for i in range(len(clip_frames))
                        if score[0, i] >= memory_threshold)
    return VideoPrediction(pred=torch.cat(preds).cpu(), score=torch.cat(scores).cpu())
