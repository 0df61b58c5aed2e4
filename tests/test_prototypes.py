"""The fast prior and PFE mask equal the authors' literal per-pair computation (docs/model.md).

`benchmarks/authors_loop.py` holds the literal version (pool `layer4 * mask` again for every
pair, full cosine maps); models/prototypes.py pools once per frame, skips masked-out rows and
shares one similarity between the prior and the PFE mask.
"""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from benchmarks.authors_loop import literal_pfe, literal_prior
from models.prototypes import ChannelPool, pfe_mask, prior_map, support_similarity

SIZE = (6, 9)


def layer4(generator, batch, frames):
    """Features [B,T,2048,h,w] with a few all-zero positions (zero vectors after pooling). Signed, so
    that negative cosines meet the zeros of masked-out positions in the max."""
    features = torch.randn(batch, frames, 2048, *SIZE, generator=generator)
    features[..., 0, :2] = 0
    return features


def tokens(features):
    batch = features.shape[0]
    pooled = ChannelPool()(rearrange(features, "b t c h w -> (b t) c h w"))
    return rearrange(pooled, "(b t) n c -> b t n c", b=batch)


@pytest.mark.parametrize("batch,query_frames,support_frames,degenerate", [
    (1, 3, 4, False), (2, 5, 7, True), (1, 1, 1, False)])
def test_prior_and_pfe_equal_the_literal_computation(batch, query_frames, support_frames, degenerate):
    g = torch.Generator().manual_seed(query_frames * 10 + support_frames)
    query, support = layer4(g, batch, query_frames), layer4(g, batch, support_frames)
    support_object = (torch.rand(batch, support_frames, 1, *SIZE, generator=g) > 0.5).float()
    query_object = (torch.rand(batch, query_frames, *SIZE, generator=g) > 0.6).long()
    if degenerate:   # empty and full support masks, a query frame that is all object / all background
        support_object[0, 0] = 0
        support_object[0, 1] = 1
        support_object[0, 2] = 0
        support_object[0, 2, 0, 3, 4] = 1      # one object position: many best matches are negative
        query_object[0, 0] = 1
        query_object[-1, -1] = 0

    similarity = support_similarity(tokens(query), tokens(support),
                                    rearrange(support_object, "b s 1 h w -> b s (h w)"))
    prior = rearrange(prior_map(similarity, query_frames), "b t (h w) -> b t 1 h w", h=SIZE[0])
    torch.testing.assert_close(prior, literal_prior(query, support, support_object), rtol=1e-5, atol=2e-6)

    pfe = pfe_mask(tokens(query), rearrange(query_object, "b t h w -> b t (h w)").float(), similarity)
    expected = literal_pfe(query, query_object, support, support_object)
    torch.testing.assert_close(rearrange(pfe, "b t k (h w) -> b t k h w", h=SIZE[0]), expected, rtol=1e-5, atol=2e-6)
