"""The 1-shot protocol end to end: train.py and test.py with support_shots=1 on tiny synthetic data,
and training's clips 2 and 3 put their memory frames in the memory branch, not beside the support."""
import json
import logging

import pytest
import torch

from helpers import reference_case, reference_model
from scripts_support import load_script, run, tiny, write_dataset

train = load_script("train")
test_script = load_script("test")


@pytest.mark.slow
@pytest.mark.e2e
def test_one_shot_training_and_testing_run_end_to_end(tmp_path):
    data = write_dataset(str(tmp_path / "ytvis"), frames=6)
    common = ["--data-root", data, "--device", "cpu", "--output-dir", tmp_path / "runs"]
    assert run(train, common + ["--backbone-weights", "none", "--run-name", "one"]
               + tiny("support_shots=1", "batch_size=2")) == 0
    checkpoint = tmp_path / "runs" / "one" / "last.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["config"]["support_shots"] == 1
    assert saved["config"]["skip_empty_supports"] is False and saved["config"]["balanced_class_sampler"] is False
    assert run(test_script, common + ["--checkpoint", checkpoint, "--output", tmp_path / "one.json",
                                      "support_shots=1", "num_workers=0"]) == 0
    log = (tmp_path / "one.log").read_text()
    assert "testing" in log and "distribution shift" not in log          # trained and tested 1-shot
    result = json.loads((tmp_path / "one.json").read_text())
    assert result["config"]["support_shots"] == 1 and result["runs"][0]["num_videos"] >= 1
    assert 0.0 <= result["aggregate"]["mean"]["J"]["mean"] <= 1.0


def test_testing_with_other_shots_than_trained_is_said(caplog):
    from vipmt.testrun import warn_if_shots_differ

    with caplog.at_level(logging.WARNING):
        warn_if_shots_differ({"support_shots": 1}, 5)
        warn_if_shots_differ(None, 1)                            # an authors' checkpoint: trained 5-shot
        warn_if_shots_differ({"support_shots": 3}, 3)
    assert "trained with 1 annotated support(s) per episode and is tested with 5" in caplog.text
    assert "trained with 5 annotated support(s) per episode and is tested with 1" in caplog.text
    assert len(caplog.records) == 2


@pytest.mark.slow
def test_training_clips_split_one_support_from_its_memory():
    """train_episode with 1 support: clip 1 has an empty memory branch (the authors' Ts = 1 case),
    clips 2 and 3 the 2 memory frames in the memory branch; the support branch always holds the
    one support's tokens only."""
    from models.episode import ClipPlan, train_episode

    size = (64, 64)
    model = reference_model(0, size, train=True)
    x = reference_case.reference_inputs(50, 2, 3, 1, size=size)
    hw = (size[0] // 8) * (size[1] // 8)
    sizes = []
    layer = model.transformer.support_memory_decoder_cross_attention_layers[0]
    handle = layer.register_forward_pre_hook(lambda module, args: sizes.append([t.shape[1] for t in args[1]]))
    try:
        plans = [ClipPlan([0], []), ClipPlan([1], [0]), ClipPlan([2], [0, 1])]
        results = train_episode(model, x["query_img"], x["query_mask"], x["support_img"], x["support_mask"], plans)
    finally:
        handle.remove()
    assert sizes == [[hw, 0], [hw, hw], [hw, 2 * hw]]
    assert all(torch.isfinite(r["loss"]) for r in results)


def test_support_shots_outside_one_to_five_is_refused_with_the_reason():
    from config import ConfigError, apply_overrides, get_config

    assert apply_overrides(get_config(), ["support_shots=1"]).support_shots == 1
    with pytest.raises(ConfigError, match=r"support_shots=6: expected 1 to 5\. The model's support branch"):
        apply_overrides(get_config(), ["support_shots=6"])
    with pytest.raises(ConfigError, match="support_shots=0"):
        apply_overrides(get_config(), ["support_shots=0"])
