"""The authors' test protocol with our model: the reference the video engine is checked against.

Every clip calls the model on images: the supports and the memory frames (with their predicted
masks) are re-encoded from scratch for each clip, as the authors' loop does. `models.VideoSegmenter`
must give the same predictions (tests/test_engine.py); benchmarks/engine_speed.py times both.
With `benchmarks.authors_loop.authors_computation()` active it also uses the authors' arithmetic.
"""
from __future__ import annotations

import torch
from torch import nn

from models.engine import (CLIP_LENGTH, MEMORY_POOL_ALL, MEMORY_SIZE, MEMORY_THRESHOLD, VideoPrediction,
                           check_video, draw_memory)


@torch.inference_mode()
def segment_video_recompute(model: nn.Module, frames: torch.Tensor, support_img: torch.Tensor,
                            support_mask: torch.Tensor, generator: torch.Generator | None = None,
                            clip_length: int = CLIP_LENGTH, memory_threshold: float = MEMORY_THRESHOLD,
                            memory_size: int = MEMORY_SIZE, use_memory: bool = True,
                            memory_pool_size: int = MEMORY_POOL_ALL) -> VideoPrediction:
    """frames [T,3,H,W], support_img [S,3,H,W], support_mask [S,1,H,W] -> VideoPrediction.
    Same arguments as `models.VideoSegmenter`."""
    check_video(frames, support_img, support_mask)
    model.eval()
    device = next(model.parameters()).device
    frames, support_img, support_mask = frames.to(device), support_img.to(device), support_mask.to(device)
    reliable, preds, scores = [], [], []        # reliable: (image [3,H,W], predicted mask [1,H,W])
    for start in range(0, len(frames), clip_length):
        clip_frames = frames[start:start + clip_length]
        if memory_pool_size > 0:
            reliable = reliable[-memory_pool_size:]
        memory = draw_memory(reliable, memory_size, generator) if use_memory else []
        images = torch.cat([support_img, *(image[None] for image, _ in memory)])
        masks = torch.cat([support_mask, *(mask[None] for _, mask in memory)])
        pred, score = model(clip_frames[None], None, images[None], masks[None], shots=len(support_img))
        preds.append(pred[0])
        scores.append(score[0])
        reliable.extend((clip_frames[i], pred[0, i, None].float()) for i in range(len(clip_frames))
                        if score[0, i] >= memory_threshold)
    return VideoPrediction(pred=torch.cat(preds).cpu(), score=torch.cat(scores).cpu())
