"""The contract: our model reproduces the authors' outputs on every golden case.

VIPMT_TEST_DEVICE=cuda runs the cases on the GPU in float32 (TF32 off; benchmarks/gpu_check.py
does). Each case records its measured differences as test properties (`--junitxml` keeps them).
"""
from __future__ import annotations

import os

import pytest
import torch
from einops import rearrange

from helpers import reference_case, reference_model
from models.episode import ClipPlan, train_episode

pytestmark = pytest.mark.golden
QUICK_CASE = "eval_b1_q5_s5"      # the golden case in the quick tier (and in benchmarks/gpu_check.py --quick)
LOSSES = ("main_loss", "aux_loss", "contrast_loss", "score_loss")
MAX_PRED_MISMATCH = 0.001
MIN_MINORITY_IOU = 0.98
SCORE_TOL = 1e-5
LOGITS_TOL = 2e-4
LOSS_REL_TOL = 1e-4
DEVICE = torch.device(os.environ.get("VIPMT_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    if not torch.cuda.is_available():
        pytest.skip("VIPMT_TEST_DEVICE=cuda but no CUDA device is available", allow_module_level=True)
    torch.backends.cudnn.allow_tf32 = False          # float32 convolutions and matmuls, not TF32
    torch.backends.cuda.matmul.allow_tf32 = False


def run_case(case: str):
    mode, seed, inputs = reference_case.golden_case(case)
    model = reference_model(seed, train=(mode == "train")).to(DEVICE)
    inputs = {k: v.to(DEVICE) for k, v in inputs.items()}
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
    return mode, {k: v.cpu() for k, v in out.items() if torch.is_tensor(v)}


def minority_iou(pred: torch.Tensor, gold: torch.Tensor) -> float:
    minority = 1 if gold.float().mean() <= 0.5 else 0
    a, b = pred == minority, gold == minority
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def relative_diff(value: float, expected: float) -> float:
    return abs(value - expected) / max(abs(expected), 1e-6)


@pytest.mark.parametrize("case", [pytest.param(case, marks=() if case == QUICK_CASE else pytest.mark.slow)
                                  for case in reference_case.golden_cases()])
def test_golden_case(case, record_property):
    gold = reference_case.load_golden(case)
    mode, out = run_case(case)
    assert out["pred"].dtype == torch.int64 and out["pred"].shape == gold["pred"].shape
    measured = {"init_logits_max_abs_diff": (out["init_logits"] - gold["init_logits"]).abs().max().item(),
                "logits_max_abs_diff": (out["logits"] - gold["logits"]).abs().max().item(),
                "pred_mismatch_fraction": (out["pred"] != gold["pred"]).float().mean().item(),
                "minority_iou": minority_iou(out["pred"], gold["pred"])}
    if mode == "eval":
        measured["score_max_abs_diff"] = (out["score"] - gold["score"]).abs().max().item()
    else:
        measured.update({f"{name}_rel_diff": relative_diff(out[name].item(), gold[name].item()) for name in LOSSES})
    for name, value in measured.items():
        record_property(name, value)
    # Localise first: the classifier logits, then the prediction.
    assert measured["init_logits_max_abs_diff"] <= LOGITS_TOL
    assert measured["logits_max_abs_diff"] <= LOGITS_TOL
    assert measured["pred_mismatch_fraction"] <= MAX_PRED_MISMATCH
    assert measured["minority_iou"] >= MIN_MINORITY_IOU
    if mode == "eval":
        assert measured["score_max_abs_diff"] <= SCORE_TOL
    else:
        for name in LOSSES:
            assert measured[f"{name}_rel_diff"] <= LOSS_REL_TOL, name


@pytest.mark.slow
@pytest.mark.parametrize("case", reference_case.episode_cases())
def test_golden_episode(case, record_property):
    seed, inputs, memory_index = reference_case.episode_case(case)
    inputs = {k: v.to(DEVICE) for k, v in inputs.items()}
    gold = reference_case.load_golden(case)
    model = reference_model(seed, train=True).to(DEVICE)
    clip = 5
    plans = [ClipPlan(list(range(0, clip)), []),
             ClipPlan(list(range(clip, 2 * clip)), list(range(clip))),
             ClipPlan(list(range(2 * clip, 3 * clip)), memory_index)]
    with torch.no_grad():             # loss values only: no graphs of three clips kept (~8 GB less)
        results = train_episode(model, inputs["query_img"], inputs["query_mask"], inputs["support_img"],
                                inputs["support_mask"], plans)
    measured = {f"clip{index}_{name}_rel_diff": relative_diff(result[name].item(), gold[f"clip{index}_{name}"].item())
                for index, result in enumerate(results, start=1) for name in LOSSES}
    measured["total_loss_rel_diff"] = relative_diff(sum(r["loss"] for r in results).item(), gold["total_loss"].item())
    for name, value in measured.items():
        record_property(name, value)
    for name, value in measured.items():
        assert value <= LOSS_REL_TOL, name
