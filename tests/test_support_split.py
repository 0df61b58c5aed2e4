"""1 to 5 annotated supports: the transformer's support branch gets the supports, its memory branch the memory.

The authors' transformer takes the first 5 support frames as supports whatever their number;
here the number of annotated supports travels with the encoding (`SupportEncoding.shots`, the
model's `shots`), so with k < 5 supports no memory frame reaches the support branch. With no
memory frame, k supports are the authors' Ts = k case (the golden files hold Ts = 2, 5, 7, 10).
"""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from benchmarks.recompute import segment_video_recompute
from helpers import reference_case, reference_model
from models import ModelError, SupportEncoding, VideoSegmenter

SIZE = (64, 112)
FRAMES = 10          # 5 annotated-looking frames + 5 frames used as memory


@pytest.fixture(scope="module")
def model():
    return reference_model(0, SIZE)


@pytest.fixture(scope="module")
def frames(model):
    """Query clip features, and FRAMES support-like frames: features, masks."""
    x = reference_case.reference_inputs(40, 1, 3, FRAMES, size=SIZE)
    with torch.no_grad():
        return (model.extract_features(x["query_img"]), model.extract_features(x["support_img"]),
                x["support_mask"])


def pick(features: dict, index) -> dict:
    return {k: v[:, index] for k, v in features.items()}


class BranchRecorder:
    """The token sets the first iteration's support/memory cross attention receives."""

    def __init__(self, model):
        self.calls = []
        layer = model.transformer.support_memory_decoder_cross_attention_layers[0]
        self.handle = layer.register_forward_pre_hook(lambda module, args: self.calls.append(
            [t.clone() for t in args[1]]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def tokens_of(encoding_features: torch.Tensor) -> torch.Tensor:
    return rearrange(encoding_features, "b s c h w -> b (s h w) c")


@pytest.mark.parametrize("shots", [1, 3])
@pytest.mark.slow
def test_memory_frames_never_reach_the_support_branch(model, frames, shots):
    """k supports + m memory frames (m = 0..5, the old code put min(m, 5 - k) of them in the support
    slot): the support branch gets exactly the k supports' tokens, the memory branch exactly the m
    memory frames' tokens, whatever m."""
    query, support, masks = frames
    with torch.no_grad():
        supports = model.encode_support(pick(support, list(range(shots))), masks[:, :shots])
        memory_all = model.encode_support(pick(support, list(range(5, FRAMES))), masks[:, 5:], shots=0)
        for count in (0, 1, 4, 5):
            encoding = SupportEncoding.cat([supports, memory_all.select(list(range(count)))])
            assert encoding.num_shots == shots and encoding.features.shape[1] == shots + count
            with BranchRecorder(model) as recorder:
                model.predict_clip(query, encoding)
            support_set, memory_set = recorder.calls[0]
            assert torch.equal(support_set, tokens_of(supports.features))
            # no memory frame: the authors' Ts = k case, an empty memory branch
            assert torch.equal(memory_set, tokens_of(memory_all.features[:, :count]))


def test_five_supports_without_memory_have_no_memory_branch(model, frames):
    query, support, masks = frames
    with torch.no_grad(), BranchRecorder(model) as recorder:
        model.predict_clip(query, support=pick(support, list(range(5))), support_mask=masks[:, :5])
    assert len(recorder.calls[0]) == 1                           # the authors' `if s_t == 5`


def test_training_path_and_engine_path_split_alike(model, frames):
    """Backbone features of supports + memory with `shots` (training, validation) and encodings joined
    with SupportEncoding.cat (the video engine) give the same clip; the authors' rule (first
    min(Ts, 5) frames are supports) gives another one when k < 5 and memory frames are present."""
    query, support, masks = frames
    index = [0, 1, 5, 6, 7]                          # 2 supports, 3 memory frames: Ts = 5
    with torch.no_grad():
        by_features = model.predict_clip(query, pick(support, index), masks[:, index], shots=2)
        encoding = SupportEncoding.cat([model.encode_support(pick(support, [0, 1]), masks[:, [0, 1]]),
                                        model.encode_support(pick(support, [5, 6, 7]), masks[:, [5, 6, 7]], shots=0)])
        by_encoding = model.predict_clip(query, encoding)
        authors_rule = model.predict_clip(query, pick(support, index), masks[:, index])   # 5 "supports"
    torch.testing.assert_close(by_features.logits, by_encoding.logits, rtol=0, atol=1e-5)
    assert torch.equal(by_features.pred, by_encoding.pred)
    assert not torch.allclose(by_features.logits, authors_rule.logits, atol=1e-3)


@pytest.mark.parametrize("shots", [1, 3])
@pytest.mark.slow
def test_k_supports_without_memory_are_the_authors_ts_k_case(model, frames, shots):
    """The first clip of a k-shot video (engine) = forward with Ts = k frames and no `shots` (how the
    golden cases with 1, 2 or 3 support frames are run)."""
    query, support, masks = frames
    x = reference_case.reference_inputs(41, 1, 3, shots, size=SIZE)
    with torch.no_grad():
        pred, score = model.eval()(x["query_img"], None, x["support_img"], x["support_mask"])
        session = VideoSegmenter(model).start(x["support_img"][0], x["support_mask"][0])
        clip = session.step(x["query_img"][0])
    assert torch.equal(clip.pred, pred[0])
    torch.testing.assert_close(clip.score, score[0], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_one_shot_video_engine_matches_the_recompute_path(model):
    """1 support, memory from reliable frames: the engine (encodings) and the authors' loop
    re-encoding images with `shots=1` give the same video."""
    x = reference_case.reference_inputs(42, 1, 8, 1, size=SIZE)           # clips of 5 and 3 frames
    options = dict(memory_threshold=0.0, memory_size=3)
    cached = VideoSegmenter(model, **options).segment(x["query_img"][0], x["support_img"][0], x["support_mask"][0],
                                                      generator=torch.Generator().manual_seed(3))
    recomputed = segment_video_recompute(model, x["query_img"][0], x["support_img"][0], x["support_mask"][0],
                                         generator=torch.Generator().manual_seed(3), **options)
    assert torch.equal(cached.pred, recomputed.pred)
    torch.testing.assert_close(cached.score, recomputed.score, rtol=0, atol=1e-5)


def test_bad_numbers_of_supports_are_clear_errors(model, frames):
    query, support, masks = frames
    for shots, frames_given in ((0, 3), (4, 3), (6, 8)):
        with pytest.raises(ModelError, match=f"shots={shots}"):
            model.predict_clip(query, pick(support, list(range(frames_given))), masks[:, :frames_given],
                               shots=shots)
    with pytest.raises(ModelError, match="1 to 5"):
        VideoSegmenter(model).start(torch.zeros(6, 3, *SIZE), torch.ones(6, 1, *SIZE))
    with pytest.raises(ModelError, match="before memory"):
        memory = model.encode_support(pick(support, [5]), masks[:, [5]], shots=0)
        SupportEncoding.cat([memory, model.encode_support(pick(support, [0]), masks[:, [0]])])
