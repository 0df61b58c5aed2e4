"""Training exactly as the authors did: what their optimiser trains, and the gradients of one episode.

Each `grads_*` golden case is a three-clip training episode (as `test_golden_episode` runs it)
followed by backward of the summed loss in the authors' code. We run the same episode with one
backward per clip (the clips share no graph, so the gradients add up to those of the sum, and
memory stays at one clip's graph) and compare every gradient of the optimiser's parameters.

Tolerances (1e-3 relative, the issue's contract):
* L2 norm of each gradient: |norm - gold| <= 1e-3 * gold.
* Sum of each gradient: |sum - gold| <= 1e-3 * max(|gold sum|, gold norm). A sum can cancel to
  nearly zero while the gradient is not small (the golden sums go down to 3e-9 for gradients
  of norm 1e-2); float32 rounding then moves it by about the size of the per-element errors
  summed, i.e. relative to the gradient's norm, not to the sum itself.
* The full [2,1,9,9] upsampler gradients: max abs diff <= 1e-3 * max abs gold.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from config import DEFAULTS
from helpers import reference_case, reference_model
from models.episode import ClipPlan, train_episode

pytestmark = [pytest.mark.golden, pytest.mark.slow]     # every test reads one 240x424 episode's backward

REL_TOL = 1e-3
CLIP = 5
UPSAMPLERS = ("upsample1", "upsample2")


def episode_inputs(case: str):
    """(weights seed, inputs) of a `grads_episode_bB_qQ_sS[_seedN]` case (see reference_case)."""
    m = re.fullmatch(r"grads_episode_b(\d+)_q(\d+)_s(\d+)(?:_seed(\d+))?", case)
    assert m is not None, f"not a gradient case name: {case}"
    batch, query, support = (int(m.group(i)) for i in (1, 2, 3))
    seed = int(m.group(4) or 0)
    return seed, reference_case.reference_inputs(seed + 1000, batch, query, support)


def gold_arrays(case: str) -> dict:
    with np.load(f"{reference_case.GOLDEN_DIR}/{case}.npz") as data:
        return {k: data[k] for k in data.files}


def run_gradient_case(case: str):
    """Runs the case's episode with backward: (golden arrays, model holding the gradients, total loss)."""
    gold = gold_arrays(case)
    seed, inputs = episode_inputs(case)
    model = reference_model(seed, train=True)
    memory = [int(i) for i in gold["memory_index"]]
    frames = inputs["query_img"].shape[1]
    assert frames == 3 * CLIP, "gradient cases are three-clip episodes"
    plans = [ClipPlan(list(range(0, CLIP)), []),
             ClipPlan(list(range(CLIP, 2 * CLIP)), list(range(CLIP))),
             ClipPlan(list(range(2 * CLIP, 3 * CLIP)), memory)]
    results = train_episode(model, inputs["query_img"], inputs["query_mask"], inputs["support_img"],
                            inputs["support_mask"], plans, backward=lambda loss: loss.backward())
    total = sum(r["loss"] for r in results).item()
    return gold, model, total


@pytest.fixture(scope="module", params=reference_case.grads_cases())
def episode_gradients(request):
    return run_gradient_case(request.param)


def test_trainable_parameters_are_the_authors(episode_gradients):
    gold, model, _ = episode_gradients
    # train.py's optimiser takes exactly these, in this order
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [str(n) for n in gold["names"]]
    assert {f"{u}.weight" for u in UPSAMPLERS} <= set(trainable)


def test_total_loss(episode_gradients):
    gold, _, total = episode_gradients
    assert abs(total - float(gold["total_loss"])) <= 1e-4 * abs(float(gold["total_loss"]))


def gradient_errors(model, gold) -> dict:
    """{name: (norm rel. error, sum error relative to max(|sum|, norm))}, float64."""
    params = dict(model.named_parameters())
    errors = {}
    for name, norm, total in zip(gold["names"], gold["norm"], gold["sum"]):
        grad = params[str(name)].grad
        assert grad is not None, f"no gradient reaches {name}"
        grad = grad.double()
        ours_norm, ours_sum = grad.norm().item(), grad.sum().item()
        errors[str(name)] = (abs(ours_norm - norm) / norm, abs(ours_sum - total) / max(abs(total), norm))
    return errors


def test_every_gradient_norm_and_sum(episode_gradients):
    gold, model, _ = episode_gradients
    errors = gradient_errors(model, gold)
    bad_norm = {n: e[0] for n, e in errors.items() if not e[0] <= REL_TOL}
    bad_sum = {n: e[1] for n, e in errors.items() if not e[1] <= REL_TOL}
    assert not bad_norm, f"gradient norms off by more than {REL_TOL} (relative): {bad_norm}"
    assert not bad_sum, f"gradient sums off by more than {REL_TOL} (relative to max(|sum|, norm)): {bad_sum}"


@pytest.mark.parametrize("upsampler", UPSAMPLERS)
def test_upsampler_gradients(episode_gradients, upsampler):
    gold, model, _ = episode_gradients
    expected = torch.from_numpy(gold[f"{upsampler}_grad"]).double()
    grad = getattr(model, upsampler).weight.grad.double()
    assert grad.shape == expected.shape == (2, 1, 9, 9)
    assert (grad - expected).abs().max().item() <= REL_TOL * expected.abs().max().item()
    # each channel has its own filter: the two channels' gradients differ (background/object)
    assert not torch.allclose(grad[0], grad[1])


def test_optimiser_settings_are_the_authors(episode_gradients):
    gold, _, _ = episode_gradients
    assert DEFAULTS.lr == float(gold["lr"])
    assert list(DEFAULTS.betas) == [float(gold["beta1"]), float(gold["beta2"])]
    assert DEFAULTS.weight_decay == float(gold["weight_decay"])
    # train.py leaves eps and amsgrad at torch's Adam defaults: they must be the authors' values
    defaults = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults
    assert defaults["eps"] == float(gold["eps"])
    assert defaults["amsgrad"] == bool(gold["amsgrad"])
