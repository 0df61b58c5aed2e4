"""The benchmarks' baseline: the authors' arithmetic (benchmarks/authors_loop.py) trains like ours.

`authors_computation()` swaps our cheaper identities for literal versions of what the authors
compute; a training episode must give the same losses and gradients either way, and leaving
the block must restore every swapped function (a leftover swap would slow down, or change,
everything that runs after it in the same process).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.authors_loop import authors_computation
from helpers import reference_case, reference_model
from models import backbone, heads, transformer, vipmt
from models.episode import plan_episode, train_episode

SIZE = (64, 112)
SWAPPED = ((vipmt.VIPMT, "predict_clip"), (vipmt.VIPMT, "reduce_features"), (vipmt.VIPMT, "merge_support"),
           (vipmt, "conv1x1_with_constants"), (vipmt, "prior_map"), (vipmt, "pfe_mask"),
           (vipmt, "support_similarity"), (transformer, "conv1x1_with_constants"),
           (transformer.PrototypeCrossAttention, "forward"), (backbone.Backbone, "forward"),
           (heads.ScoreHead, "forward"))


def _episode(model, x, plans):
    torch.manual_seed(0)                       # the same dropout draws on both paths
    model.zero_grad(set_to_none=True)
    results = train_episode(model, x["query_img"], x["query_mask"], x["support_img"], x["support_mask"], plans,
                            backward=lambda loss: loss.backward())
    return results, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_training_episode_with_the_authors_arithmetic():
    model = reference_model(3, SIZE, train=True)            # dropout off: any RNG use would show
    x = reference_case.reference_inputs(7, 2, 3, 5, size=SIZE)
    # three 1-frame clips; clips 2 and 3 get one memory frame (6 support frames)
    plans = plan_episode(3, clip_length=1, memory_size=1, generator=torch.Generator().manual_seed(0))
    before = {(owner, name): getattr(owner, name) for owner, name in SWAPPED}
    ours, our_grads = _episode(model, x, plans)
    with authors_computation():
        assert any(getattr(owner, name) is not function for (owner, name), function in before.items())
        theirs, their_grads = _episode(model, x, plans)
    assert all(getattr(owner, name) is function for (owner, name), function in before.items())

    for a, b in zip(ours, theirs, strict=True):
        for name in ("main_loss", "aux_loss", "contrast_loss", "score_loss"):
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
        assert torch.equal(a["pred"], b["pred"])
    # Gradients: float32 rounding noise only. Its size here, measured by running OUR arithmetic
    # with 1 and with 2 threads: 1.0e-3 relative (L2) in the worst tensor (merge_res.2.weight),
    # 9.4e-5 over all gradients; ours vs the authors' gives the same worst tensor, 1.0e-3. Allowed:
    # 4x that noise (a missing or doubled term would be off by order 1).
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 250
    for name, grad in our_grads.items():
        difference = (grad - their_grads[name]).norm() / their_grads[name].norm().clamp_min(1e-30)
        assert difference <= 4e-3, name
    ours_flat, theirs_flat = (torch.cat([g.flatten() for g in grads.values()]) for grads in (our_grads, their_grads))
    assert (ours_flat - theirs_flat).norm() <= 4e-4 * theirs_flat.norm()
