"""Strict config overrides and serialisation."""
import json

import pytest
import yaml

from config import (DEFAULTS, ConfigError, apply_overrides, config_to_dict, get_config,
                    load_config_file, save_config, update_config)


def test_defaults_match_the_paper_settings():
    c = get_config()
    assert c.query_frames == 15 and c.clip_length == 5 and c.support_shots == 5
    assert c.epochs == 100 and c.episodes_per_class == 100 and c.val_episodes_per_class == 50
    assert c.batch_size == 4 and c.lr == 5e-4 and c.betas == [0.9, 0.999] and c.weight_decay == 5e-4
    assert c.memory_threshold == 0.8 and c.memory_size == 5 and c.seed == 42
    assert c.image_size == [240, 424] and c.amp is True
    assert c.backbone_weights == "pretrain_model/resnet50_v2.pth"


def test_get_config_is_a_copy():
    c = get_config()
    c.image_size[0] = 64
    c.lr = 1.0
    assert DEFAULTS.image_size == [240, 424] and DEFAULTS.lr == 5e-4


def test_overrides_are_parsed_with_the_default_type():
    c = apply_overrides(get_config(), ["lr=1e-3", "epochs=3", "amp=false", "image_size=64,112",
                                       "betas=[0.8, 0.99]", "dataset=minivspw", "group=3",
                                       "weight_decay=0"])
    assert c.lr == 1e-3 and isinstance(c.lr, float)
    assert c.epochs == 3 and c.amp is False
    assert c.image_size == [64, 112] and c.betas == [0.8, 0.99]
    assert c.dataset == "minivspw" and c.group == 3
    assert c.weight_decay == 0.0 and isinstance(c.weight_decay, float)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_config(), ["learning_rate=1"])
    msg = str(err.value)
    assert "'learning_rate'" in msg and "lr" in msg and "memory_threshold" in msg


@pytest.mark.parametrize("override, fragment", [
    ("epochs=1.5", "expected an int"),
    ("lr=fast", "expected a float"),
    ("amp=maybe", "expected a bool"),
    ("image_size=64", "list of 2 int"),
    ("image_size=60,112", "multiple of 8"),
    ("image_size=240,420", "multiple of 8"),
    ("group=5", "1..4"),
    ("dataset=coco", "youtube_vis"),
    ("device=tpu", "cpu"),
    ("query_frames=14", "multiple of clip_length"),
    ("memory_threshold=1.5", "[0, 1]"),
    ("batch_size=0", "positive"),
    ("lr", "key=value"),
])
def test_bad_overrides_raise_one_clear_error(override, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        apply_overrides(get_config(), [override])
    assert fragment in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("lr=nan", "lr=nan: expected a finite number"),
    ("lr=inf", "lr=inf: expected a finite number"),
    ("lr=-inf", "lr=-inf: expected a finite number"),
    ("lr=0", "lr=0.0: expected a learning rate > 0"),
    ("lr=-1e-4", "lr=-0.0001: expected a learning rate > 0"),
    ("weight_decay=nan", "weight_decay=nan: expected a finite number"),
    ("weight_decay=inf", "weight_decay=inf: expected a finite number"),
    ("weight_decay=-1e-5", "weight_decay=-1e-05: expected >= 0"),
    ("grad_clip=-1", "grad_clip=-1.0: expected >= 0"),
    ("betas=0.9,nan", "betas=0.9,nan: expected a finite number"),
    ("betas=0.9,inf", "betas=0.9,inf: expected a finite number"),
    ("betas=0.9,1.0", "betas=0.9,1.0: each must be in [0, 1)"),
    ("betas=-0.1,0.999", "betas=-0.1,0.999: each must be in [0, 1)"),
    ("memory_threshold=nan", "memory_threshold=nan: expected a finite number"),
    ("loss_weight_aux=inf", "loss_weight_aux=inf: expected a finite number"),
])
def test_optimizer_values_must_be_finite_and_in_range(override, fragment):
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_config(), [override])
    assert fragment in str(err.value)


def test_finite_edge_values_are_accepted():
    c = apply_overrides(get_config(), ["weight_decay=0", "betas=0,0.999999", "lr=1e-12"])
    assert c.weight_decay == 0.0 and c.betas == [0.0, 0.999999] and c.lr == 1e-12


def test_non_finite_values_in_a_config_file_are_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: .nan\n")                 # YAML's nan
    with pytest.raises(ConfigError, match="c.yaml.*lr=nan: expected a finite number"):
        load_config_file(str(p))


def test_update_config_rejects_wrong_python_types():
    with pytest.raises(ConfigError, match="expected int"):
        update_config(get_config(), {"epochs": "3"})
    with pytest.raises(ConfigError, match="expected bool"):
        update_config(get_config(), {"amp": 1})
    c = update_config(get_config(), {"lr": 1})          # int accepted for a float key
    assert c.lr == 1.0 and isinstance(c.lr, float)


def test_save_and_load_round_trip(tmp_path):
    c = apply_overrides(get_config(), ["image_size=64,112", "lr=0.01"])
    for name in ("config.yaml", "config.json"):
        path = save_config(c, str(tmp_path / name))
        back = load_config_file(path)
        assert config_to_dict(back) == config_to_dict(c)
    assert yaml.safe_load(open(tmp_path / "config.yaml"))["image_size"] == [64, 112]
    assert json.load(open(tmp_path / "config.json"))["lr"] == 0.01


def test_load_config_file_is_strict(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ConfigError, match="epochz"):
        load_config_file(str(p))
