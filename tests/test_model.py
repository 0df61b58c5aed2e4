"""Model behaviour beyond the golden cases: shapes, gradients, feature reuse, sizes, weights."""
from __future__ import annotations

import pytest
import torch

from helpers import reference_case, reference_model
from models import VIPMT, ModelError
from models.backbone import Backbone

SMALL = (64, 112)


def inputs(batch, query_frames, support_frames, size=SMALL, seed=3):
    return reference_case.reference_inputs(seed, batch, query_frames, support_frames, size=size)


@pytest.fixture(scope="module")
def small_model():
    return reference_model(0, SMALL)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("support_frames", [1, 5, 7])
@pytest.mark.parametrize("query_frames", [1, 5])
@pytest.mark.slow
def test_eval_shapes(small_model, batch, support_frames, query_frames):
    x = inputs(batch, query_frames, support_frames)
    with torch.no_grad():
        pred, score = small_model.eval()(x["query_img"], None, x["support_img"], x["support_mask"])
    assert pred.shape == (batch, query_frames, *SMALL) and pred.dtype == torch.int64
    assert set(pred.unique().tolist()) <= {0, 1}
    assert score.shape == (batch, query_frames)
    assert ((score > 0) & (score < 1)).all()


@pytest.mark.slow
def test_train_outputs_and_gradients():
    model = reference_model(1, SMALL, train=True)
    x = inputs(2, 2, 6)
    out = model(x["query_img"], x["query_mask"], x["support_img"], x["support_mask"])
    for name in ("main_loss", "aux_loss", "contrast_loss", "score_loss", "loss"):
        assert out[name].dim() == 0 and torch.isfinite(out[name]), name
    assert out["contrast_loss"] > 0   # two samples: each sees the other's prototype
    assert out["pred"].shape == (2, 2, *SMALL)
    for key, channels in (("0", 256), ("1", 512), ("2", 1024), ("3", 2048)):
        assert out["query_features"][key].shape[:3] == (2, 2, channels)
        assert out["support_features"][key].shape[:3] == (2, 6, channels)
        assert not out["query_features"][key].requires_grad
    out["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(p.grad is None for p in model.backbone.parameters())
    # the authors train both 8x upsamplers' filters, each channel on its own
    for name in ("upsample1.weight", "upsample2.weight"):
        weight = trainable[name]
        assert weight.shape == (2, 1, 9, 9) and weight.is_contiguous()
        assert not torch.equal(weight.grad[0], weight.grad[1])
    assert trainable["upsample1.weight"].data_ptr() != trainable["upsample2.weight"].data_ptr()


def test_upsamplers_start_as_box_filters_and_load_learned_filters():
    model = VIPMT(backbone_weights=None, image_size=SMALL)
    for upsampler in (model.upsample1, model.upsample2):
        assert torch.equal(upsampler.weight.detach(), torch.full((2, 1, 9, 9), 1.0 / 81))
    # an authors' checkpoint holds learned per-channel filters: a strict load takes them as they are
    state = model.state_dict()
    learned = {name: torch.randn(2, 1, 9, 9) for name in ("upsample1.weight", "upsample2.weight")}
    state.update(learned)
    model.load_state_dict(state, strict=True)
    for name, value in learned.items():
        assert torch.equal(model.state_dict()[name], value)
    logits = torch.randn(1, 2, 4, 4)
    expected = torch.nn.functional.conv2d(torch.nn.functional.interpolate(logits, scale_factor=8.0),
                                          learned["upsample1.weight"], padding=4, groups=2)
    torch.testing.assert_close(model.upsample1(logits), expected)


def test_state_dict_and_trainable_parameters_follow_the_reference_order():
    model = VIPMT(backbone_weights=None)
    assert list(model.state_dict()) == list(reference_case.reference_keys())


@pytest.mark.slow
def test_feature_reuse_gives_same_losses():
    model = reference_model(2, SMALL, train=True)
    x = inputs(2, 3, 5)
    from_images = model(x["query_img"], x["query_mask"], x["support_img"], x["support_mask"])
    from_features = model(x["query_img"], x["query_mask"], from_images["support_features"], x["support_mask"])
    for name in ("main_loss", "aux_loss", "contrast_loss", "score_loss"):
        torch.testing.assert_close(from_features[name], from_images[name], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_non_default_size_runs():
    size = (128, 224)
    model = reference_model(0, size)
    x = inputs(1, 2, 5, size=size)
    with torch.no_grad():
        pred, score = model(x["query_img"], torch.zeros_like(x["query_mask"]), x["support_img"], x["support_mask"])
    assert pred.shape == (1, 2, *size) and score.shape == (1, 2)
    assert model.score_head.fc1.in_features == 256 * 4 * 7


def test_default_size_score_head_matches_reference_shape():
    model = VIPMT(backbone_weights=None)
    assert tuple(model.score_head.fc1.weight.shape) == reference_case.reference_keys()["score_head.fc1.weight"]


@pytest.mark.parametrize("size", [(100, 424), (240, 420), (32, 64), ("a", 3)])
def test_unsupported_size_is_a_clear_error(size):
    with pytest.raises(ModelError, match="image size|image_size"):
        VIPMT(backbone_weights=None, image_size=size)


def test_input_of_wrong_size_is_a_clear_error(small_model):
    x = inputs(1, 2, 5, size=(72, 112))
    with pytest.raises(ModelError, match="built for 64x112"):
        small_model.eval()(x["query_img"], None, x["support_img"], x["support_mask"])
    y = inputs(1, 2, 5)
    with pytest.raises(ModelError, match="support_mask"):
        small_model(y["query_img"], None, y["support_img"], y["support_mask"][:, :3])


def test_missing_backbone_weights_names_the_file(tmp_path):
    path = tmp_path / "resnet50_v2.pth"
    with pytest.raises(ModelError, match=str(path)) as error:
        VIPMT(backbone_weights=path)
    assert "pretrain_model/README.md" in str(error.value)


@pytest.mark.slow
def test_backbone_weights_load_with_fc_and_reject_mismatch(tmp_path):
    source = Backbone()
    state = {k: torch.randn_like(v) for k, v in source.body.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["bn1.num_batches_tracked"] = torch.tensor(0)
    good = tmp_path / "good.pth"
    torch.save(state, good)
    model = VIPMT(backbone_weights=good, image_size=SMALL)
    torch.testing.assert_close(model.backbone.body.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert not any(p.requires_grad for p in model.backbone.parameters())

    state.pop("layer1.0.conv1.weight")
    bad = tmp_path / "torchvision_resnet50.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError, match="missing: layer1.0.conv1.weight"):
        VIPMT(backbone_weights=bad, image_size=SMALL)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="cannot read backbone weights"):
        VIPMT(backbone_weights=garbage, image_size=SMALL)


def test_reference_state_dict_loads_strictly():
    model = VIPMT(backbone_weights=None)
    state = reference_case.reference_state_dict(5)
    assert set(model.state_dict()) == set(state)
    model.load_state_dict(state, strict=True)
