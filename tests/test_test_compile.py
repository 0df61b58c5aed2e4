"""test_compile: torch.compile (inductor) of the model under test, opt-in, with a clear error."""
from __future__ import annotations

import pytest
import torch

from config import DEFAULTS, ConfigError, apply_overrides, get_config
from config.cli import KEY_HELP
from utils.runtime import UserError
from vipmt import segmenter
from vipmt.cli import resolve_config

SIZE = (64, 112)


def test_the_key_is_off_by_default_and_typed():
    assert DEFAULTS.test_compile is False and "test_compile" in KEY_HELP
    assert apply_overrides(get_config(), ["test_compile=yes"]).test_compile is True
    with pytest.raises(ConfigError, match="test_compile"):
        apply_overrides(get_config(), ["test_compile=3"])


def test_a_broken_compiler_is_a_user_error_not_a_silent_fallback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(segmenter.torch, "compile", broken)
    cfg = resolve_config({}, {"test_compile": True, "image_size": list(SIZE)})
    with pytest.raises(UserError, match="test_compile=false") as err:
        segmenter.make_segmenter(object(), cfg)
    assert "No working C++ compiler" in str(err.value)


@pytest.mark.slow                                      # inductor compiles C++: ~30 s
def test_compiled_model_predicts_what_the_eager_one_does(monkeypatch):
    try:
        segmenter.check_compiler()
    except UserError as exc:
        pytest.skip(f"inductor unavailable here: {exc}")
    from models import VIPMT, VideoSegmenter

    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=SIZE).eval()
    g = torch.Generator().manual_seed(1)
    frames, support_img = torch.randn(6, 3, *SIZE, generator=g), torch.randn(5, 3, *SIZE, generator=g)
    support_mask = (torch.rand(5, 1, *SIZE, generator=g) > 0.5).float()

    def segment():
        return VideoSegmenter(model, memory_threshold=0.0).segment(
            frames, support_img, support_mask, generator=torch.Generator().manual_seed(0))

    eager = segment()
    # The score head only: compiling the backbone takes minutes on a 2-core CPU. The backbone's
    # and transformer's compiled predictions are compared at 240x424 by benchmarks/test_profile.py.
    monkeypatch.setattr(segmenter, "COMPILED_MODULES", ("score_head",))
    cfg = resolve_config({}, {"test_compile": True, "image_size": list(SIZE)})
    segmenter.make_segmenter(model, cfg)
    assert model.score_head.forward is not type(model.score_head).forward.__get__(model.score_head)
    compiled = segment()
    assert segmenter.compile_seconds() > 0
    assert torch.equal(compiled.pred, eager.pred)
    assert torch.allclose(compiled.score, eager.score, atol=1e-4, rtol=0)   # inductor may reorder float sums
