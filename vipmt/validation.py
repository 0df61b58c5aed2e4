"""Training's validation: the val split's episodes after an epoch, and the hook that runs it.

:func:`validate_episodes` segments the fold's held-out classes with the three-clip scheme of
training in eval mode (memory = ground-truth masks of earlier frames) and returns the mean
class IoU; :class:`ValidationHook` runs it after every ``validate_every`` epochs (and the last)
and sets the best epoch from it. test.py's protocol is :mod:`vipmt.evaluation`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping

import torch
from tqdm import tqdm

from utils import distributed as du
from utils.metrics import FewShotEvaluator

from .build import TrainingData, amp_autocast
from .training import HookBase

__all__ = ["VAL_MEMORY_SEED_OFFSET", "validate_episodes", "ValidationHook"]

VAL_MEMORY_SEED_OFFSET = 7919             # validation memory draws use their own fixed generator


@torch.no_grad()
def validate_episodes(model, data: TrainingData, cfg, *, device: torch.device, dist_info, amp: bool) -> Dict[str, Any]:
    """Training's validation: the val split's episodes with the three-clip scheme of training in eval
    mode (memory = ground-truth masks of earlier frames), this rank's share, merged over ranks.

    Returns ``{"class_iou": {class: IoU}, "mean_class_iou": float}``; the same episodes and memory
    draws at every validation (val epoch 0, a generator seeded with seed + VAL_MEMORY_SEED_OFFSET).
    """
    from models.episode import plan_episode, predict_episode  # noqa: WPS433

    model.eval()
    data.val_set.set_epoch(0)
    generator = torch.Generator().manual_seed(cfg.seed + VAL_MEMORY_SEED_OFFSET)
    evaluator = FewShotEvaluator(boundary=False, consistency=False)
    loader = data.val_loader(dist_info.rank, dist_info.world_size)
    for batch in tqdm(loader, desc="validate", leave=False, disable=not dist_info.is_main, dynamic_ncols=True):
        tensors = [batch[k].to(device) for k in ("query_img", "query_mask", "support_img", "support_mask")]
        plans = plan_episode(tensors[0].shape[1], cfg.clip_length, cfg.memory_size, generator)
        with amp_autocast(device, amp):
            pred, _score = predict_episode(model, *tensors, plans)
        gt = tensors[1][:, :, 0]
        for b, class_id in enumerate(batch["class_id"]):
            evaluator.add_video(class_id, pred[b].cpu(), gt[b].cpu())
    merged = FewShotEvaluator(boundary=False, consistency=False)
    for part in du.all_gather_object(evaluator):       # every rank gets every rank's counts
        merged.merge(part)
    return {"class_iou": merged.class_iou(), "mean_class_iou": merged.mean_class_iou()}


class ValidationHook(HookBase):
    """Validates after every ``validate_every`` epochs and the last; tracks the best epoch.

    ``validate(model)`` returns ``{"class_iou": {class: IoU}, "mean_class_iou": float}``
    (:func:`validate_episodes` with the run's data, device and precision).
    """

    def __init__(self, validate: Callable[[Any], Mapping[str, Any]]):
        self.validate = validate

    def after_epoch(self, trainer, record: Dict[str, Any]) -> None:
        """``trainer``: the :class:`vipmt.training.Trainer` (not imported: training.py imports this module)."""
        state, cfg = trainer.state, trainer.cfg
        if state.epoch % cfg.validate_every != 0 and state.epoch != cfg.epochs:
            return
        val = self.validate(trainer.model)
        metric = val["mean_class_iou"]
        record["val_mean_class_iou"] = metric
        record["val_class_iou"] = {str(k): v for k, v in val["class_iou"].items()}
        if math.isfinite(metric) and (state.best_metric is None or metric > state.best_metric):
            state.best_metric, state.best_epoch = metric, state.epoch
