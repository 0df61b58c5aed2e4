"""The feature-caching video engine gives the authors' clip-by-clip predictions."""
from __future__ import annotations

import pytest
import torch

from helpers import reference_case, reference_model
from benchmarks.recompute import segment_video_recompute
from models import ModelError, VideoSegmenter
from models.engine import draw_memory

SIZE = (64, 112)


@pytest.fixture(scope="module")
def model():
    return reference_model(0, SIZE)


def video(seed: int, frames: int, shots: int = 5):
    x = reference_case.reference_inputs(seed, 1, frames, shots, size=SIZE)
    return x["query_img"][0], x["support_img"][0], x["support_mask"][0]


def both_paths(model, frames, support_img, support_mask, **options):
    cached = VideoSegmenter(model, **options).segment(frames, support_img, support_mask,
                                                      generator=torch.Generator().manual_seed(11))
    recomputed = segment_video_recompute(model, frames, support_img, support_mask,
                                         generator=torch.Generator().manual_seed(11), **options)
    return cached, recomputed


@pytest.mark.parametrize("seed,frames,options", [
    pytest.param(20, 12, dict(memory_threshold=0.0, memory_size=5), marks=pytest.mark.slow),   # every frame reliable, random draws
    pytest.param(21, 13, dict(memory_threshold=0.505, memory_size=3), marks=pytest.mark.slow), # some frames reliable
    (22, 7, dict(memory_threshold=1.1)),                        # none reliable: supports only
    pytest.param(23, 11, dict(use_memory=False), marks=pytest.mark.slow),
    (24, 3, dict(memory_threshold=0.0)),                        # one short clip
])
@pytest.mark.slow
def test_engine_matches_recompute_path(model, seed, frames, options):
    cached, recomputed = both_paths(model, *video(seed, frames), **options)
    assert cached.pred.shape == (frames, *SIZE) and cached.score.shape == (frames,)
    assert torch.equal(cached.pred, recomputed.pred)
    torch.testing.assert_close(cached.score, recomputed.score, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_memory_changes_later_clips(model):
    frames, support_img, support_mask = video(30, 10)
    with_memory = VideoSegmenter(model, memory_threshold=0.0).segment(frames, support_img, support_mask)
    without = VideoSegmenter(model, use_memory=False).segment(frames, support_img, support_mask)
    assert torch.equal(with_memory.pred[:5], without.pred[:5])          # clip 1 has no memory
    assert not torch.allclose(with_memory.score[5:], without.score[5:])


def test_draw_memory_keeps_order_and_size():
    frames = list(range(9))
    g = torch.Generator().manual_seed(0)
    drawn = draw_memory(frames, 5, g)
    assert len(drawn) == 5 and drawn == sorted(drawn) and set(drawn) <= set(frames)
    assert draw_memory(frames[:3], 5, g) == [0, 1, 2]
    draws = {tuple(draw_memory(frames, 5, g)) for _ in range(20)}
    assert len(draws) > 1


def test_bad_video_shapes_are_clear_errors(model):
    frames, support_img, support_mask = video(31, 2)
    with pytest.raises(ModelError, match="frames"):
        VideoSegmenter(model).segment(frames[None], support_img, support_mask)
    with pytest.raises(ModelError, match="no frames"):
        VideoSegmenter(model).segment(frames[:0], support_img, support_mask)


@pytest.mark.slow
def test_memory_pool_size_keeps_the_latest_reliable_frames(model):
    """A bounded pool draws from the last N reliable frames: same as the recompute path with the
    same bound, and the session never holds more than N memory frames."""
    frames, support_img, support_mask = video(32, 17)
    options = dict(memory_threshold=0.0, memory_size=2, memory_pool_size=3)
    cached, recomputed = both_paths(model, frames, support_img, support_mask, **options)
    assert torch.equal(cached.pred, recomputed.pred)
    torch.testing.assert_close(cached.score, recomputed.score, rtol=0, atol=1e-5)
    session = VideoSegmenter(model, **options).start(support_img, support_mask, torch.Generator().manual_seed(11))
    for start in range(0, 17, 5):
        session.step(frames[start:start + 5])
        assert len(session.memory_pool) <= 3
    assert len(session.memory_pool) == 3
    for frame in session.memory_pool:      # only the object positions' layer4 tokens are kept
        assert frame.object_tokens.shape[0] == int(frame.object.sum())


@pytest.mark.slow
def test_session_steps_clip_by_clip(model):
    frames, support_img, support_mask = video(33, 8)
    whole = VideoSegmenter(model, memory_threshold=0.0).segment(frames, support_img, support_mask,
                                                                generator=torch.Generator().manual_seed(3))
    session = VideoSegmenter(model, memory_threshold=0.0).start(support_img, support_mask,
                                                                torch.Generator().manual_seed(3))
    clips = [session.step(frames[:5]), session.step(frames[5:])]
    assert torch.equal(torch.cat([c.pred for c in clips]), whole.pred)
    assert torch.equal(torch.cat([c.score for c in clips]), whole.score)
    with pytest.raises(ModelError, match="1 <= t <= 5"):
        session.step(frames[:6])
    with pytest.raises(ModelError, match="clip must be"):
        session.step(frames[0])


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(memory_threshold=0.0, memory_size=1),       # memory on: every frame reliable, one drawn of several
    dict(use_memory=False),                          # memory off
    dict(memory_threshold=1.1),                      # memory on but empty: no frame is reliable
], ids=["memory", "no_memory", "empty_memory"])
def test_several_videos_per_pass_equal_one_at_a_time(model, options):
    """segment_many stacks the clips of 2 videos per pass, refilling as the 3 videos of different
    lengths finish (clips of 2 and 1 frames, 0 or 1 memory frames: several groups per pass), each
    with its own supports and generator: the same masks and, within 1e-5, scores as `segment`."""
    from models import QueryVideo

    segmenter = VideoSegmenter(model, clip_length=2, **options)
    lengths = (5, 1, 3)
    videos = [video(40 + k, frames, shots=2) for k, frames in enumerate(lengths)]
    alone = [segmenter.segment(*v, generator=torch.Generator().manual_seed(k)) for k, v in enumerate(videos)]
    batched = list(segmenter.segment_many((QueryVideo(*v, generator=torch.Generator().manual_seed(k), tag=k)
                                           for k, v in enumerate(videos)), video_batch=2))
    assert [tag for tag, _ in batched] == [1, 0, 2]         # the 1-frame video finishes first, video 2 takes its place
    for k, result in batched:
        assert result.pred.shape == (lengths[k], *SIZE)
        assert torch.equal(result.pred, alone[k].pred), k
        torch.testing.assert_close(result.score, alone[k].score, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_step_classes_gives_each_session_the_authors_results_on_one_backbone_pass(model):
    """Two sessions of one video with other supports (two classes), stepped together: each gives
    the recompute path's masks for its supports alone (scores within 1e-5, as above) and exactly
    its own `segment`, while the backbone sees each query frame once."""
    frames, support_img, support_mask = video(50, 8)
    other_img, other_mask = video(51, 1, shots=2)[1:]
    options = dict(memory_threshold=0.0, memory_size=2)
    segmenter = VideoSegmenter(model, **options)
    supports = [(support_img, support_mask), (other_img, other_mask)]
    sessions = [segmenter.start(*s, torch.Generator().manual_seed(11)) for s in supports]
    seen = []
    extract = model.extract_features
    model.extract_features = lambda images: seen.append(images.shape[1]) or extract(images)
    try:
        clips = [segmenter.step_classes(sessions, frames[start:start + 5]) for start in (0, 5)]
    finally:
        del model.extract_features
    assert seen == [5, 3]
    for k, (img, mask) in enumerate(supports):
        pred = torch.cat([clip[k].pred for clip in clips])
        score = torch.cat([clip[k].score for clip in clips])
        cached, recomputed = both_paths(model, frames, img, mask, **options)
        assert torch.equal(pred, cached.pred) and torch.equal(score, cached.score)
        assert torch.equal(pred, recomputed.pred)
        torch.testing.assert_close(score, recomputed.score, rtol=0, atol=1e-5)
    assert not torch.equal(clips[1][0].score, clips[1][1].score)
