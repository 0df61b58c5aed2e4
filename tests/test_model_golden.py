"""The contract: our model reproduces the authors' outputs on every golden case."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from helpers import reference_case, reference_model
from models.episode import ClipPlan, train_episode

LOSSES = ("main_loss", "aux_loss", "contrast_loss", "score_loss")
MAX_PRED_MISMATCH = 0.001
MIN_MINORITY_IOU = 0.98
SCORE_TOL = 1e-5
LOGITS_TOL = 2e-4
LOSS_REL_TOL = 1e-4


def run_case(case: str):
    mode, seed, inputs = reference_case.golden_case(case)
    model = reference_model(seed, train=(mode == "train"))
    captured = {}
    for name in ("cls", "ini_cls"):
        getattr(model, name).register_forward_hook(
            lambda module, args, output, name=name: captured.__setitem__(name, output.detach()))
    args = (inputs["query_img"], inputs["query_mask"], inputs["support_img"], inputs["support_mask"])
    if mode == "eval":
        with torch.no_grad():
            pred, score = model(*args)
        out = {"pred": pred, "score": score}
    else:
        out = model(*args)
    batch = inputs["query_img"].shape[0]
    out["logits"] = rearrange(captured["cls"], "(b t) k h w -> b t k h w", b=batch)
    out["init_logits"] = rearrange(captured["ini_cls"], "(b t) k h w -> b t k h w", b=batch)
    return mode, out


def minority_iou(pred: torch.Tensor, gold: torch.Tensor) -> float:
    minority = 1 if gold.float().mean() <= 0.5 else 0
    a, b = pred == minority, gold == minority
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


@pytest.mark.parametrize("case", reference_case.golden_cases())
def test_golden_case(case):
    gold = reference_case.load_golden(case)
    mode, out = run_case(case)
    # Localise first: the classifier logits, then the prediction.
    assert (out["init_logits"] - gold["init_logits"]).abs().max().item() <= LOGITS_TOL
    assert (out["logits"] - gold["logits"]).abs().max().item() <= LOGITS_TOL
    assert out["pred"].dtype == torch.int64 and out["pred"].shape == gold["pred"].shape
    assert (out["pred"] != gold["pred"]).float().mean().item() <= MAX_PRED_MISMATCH
    assert minority_iou(out["pred"], gold["pred"]) >= MIN_MINORITY_IOU
    if mode == "eval":
        assert (out["score"] - gold["score"]).abs().max().item() <= SCORE_TOL
    else:
        for name in LOSSES:
            expected = gold[name].item()
            assert abs(out[name].item() - expected) <= LOSS_REL_TOL * max(abs(expected), 1e-6), name


@pytest.mark.parametrize("case", reference_case.episode_cases())
def test_golden_episode(case):
    seed, inputs, memory_index = reference_case.episode_case(case)
    gold = reference_case.load_golden(case)
    model = reference_model(seed, train=True)
    clip = 5
    plans = [ClipPlan(list(range(0, clip)), []),
             ClipPlan(list(range(clip, 2 * clip)), list(range(clip))),
             ClipPlan(list(range(2 * clip, 3 * clip)), memory_index)]
    results = train_episode(model, inputs["query_img"], inputs["query_mask"], inputs["support_img"],
                            inputs["support_mask"], plans)
    for index, result in enumerate(results, start=1):
        for name in LOSSES:
            expected = gold[f"clip{index}_{name}"].item()
            assert abs(result[name].item() - expected) <= LOSS_REL_TOL * max(abs(expected), 1e-6), (index, name)
    total = sum(r["loss"] for r in results).item()
    assert abs(total - gold["total_loss"].item()) <= LOSS_REL_TOL * abs(gold["total_loss"].item())
