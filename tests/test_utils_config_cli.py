"""Config keys as command-line options, the authors' names as aliases, and conflicts between them."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from config import DEFAULTS, ConfigError
from config.cli import add_config_arguments, alias_table_markdown, config_values_from_args, explicit_values

ROOT = Path(__file__).resolve().parents[1]


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py")
    add_config_arguments(p, **kwargs)
    return p


def given(*argv: str) -> dict:
    return explicit_values(parser().parse_args(list(argv)))


@pytest.mark.parametrize("argv, expected", [
    (["--batch_size", "4"], {"batch_size": 4}),
    (["--batch-size", "4"], {"batch_size": 4}),
    (["--batch-size=4"], {"batch_size": 4}),
    (["--max_epoch", "3"], {"epochs": 3}),
    (["--input_size", "240", "424"], {"image_size": [240, 424]}),
    (["--input_size", "240,424"], {"image_size": [240, 424]}),
    (["--image-size", "64", "112", "--lr", "1e-4"], {"image_size": [64, 112], "lr": 1e-4}),
    (["--amp", "false", "--test-bf16", "yes"], {"amp": False, "test_bf16": True}),
    (["--sample_per_class", "7", "--snapshot_dir", "out"], {"episodes_per_class": 7, "output_dir": "out"}),
    (["--query_frame", "3", "--support_frame", "2"], {"clip_length": 3, "support_shots": 2}),
    (["--train_seed", "5"], {"seed": 5}),
    (["--split", "0"], {"group": 1}),                   # PFENet's 0-based fold index
    (["--split", "3"], {"group": 4}),
    (["--max_epoch", "3", "--epochs", "3"], {"epochs": 3}),   # the same value twice is no conflict
    ([], {}),                                           # only what was given, no defaults
])
def test_options_and_aliases_set_their_keys(argv, expected):
    values = given(*argv)
    assert values == expected
    assert all(type(values[k]) is type(v) for k, v in expected.items())


def test_every_key_has_an_option_of_its_type():
    for key, default in DEFAULTS.items():
        if isinstance(default, list):
            tokens = [str(v) for v in default]
        else:
            tokens = [str(default).lower() if isinstance(default, bool) else str(default)]
        for name in {"--" + key.replace("_", "-"), "--" + key}:
            assert config_values_from_args(parser().parse_args([name] + tokens)) == {key: default}, name


def test_dataset_roots_from_the_authors_data_path_and_data_root():
    assert given("--data_path", "data") == {"youtube_vis_root": os.path.join("data", "Youtube-VOS"),
                                            "minivspw_root": os.path.join("data", "VSPW_480p")}
    assert given("--data-root", "X") == {"youtube_vis_root": "X"}
    assert given("--data_root", "X", "--dataset", "minivspw") == {"dataset": "minivspw", "minivspw_root": "X"}
    # the dataset may also come from a key=value override
    assert given("dataset=minivspw", "--data-root", "X") == {"dataset": "minivspw", "minivspw_root": "X"}


def test_initmodel_path_folder_means_the_weights_file_inside(tmp_path):
    assert given("--initmodel_path", str(tmp_path)) == {"backbone_weights": str(tmp_path / "resnet50_v2.pth")}
    assert given("--initmodel_path", "pretrain_model/") == {"backbone_weights": "pretrain_model/resnet50_v2.pth"}
    assert given("--initmodel_path", "w.pth") == {"backbone_weights": "w.pth"}


@pytest.mark.parametrize("argv, fragments", [
    (["--max_epoch", "3", "--epochs", "4"], ["'epochs'", "--max_epoch 3", "--epochs 4"]),
    (["--batch_size", "4", "--batch-size", "2"], ["'batch_size'", "--batch_size 4", "--batch-size 2"]),
    (["--input_size", "240", "424", "--test_size", "240,432"], ["'image_size'", "--input_size 240 424",
                                                                  "--test_size 240 432"]),
    (["--split", "0", "--group", "2"], ["'group'", "--split 0 (= group=1)", "--group 2"]),
    (["--data_path", "d", "--youtube-vis-root", "x"], ["'youtube_vis_root'", "--data_path d", "--youtube-vis-root x"]),
    (["--epochs", "3", "epochs=4"], ["'epochs'", "epochs=4", "--epochs 3"]),
])
def test_conflicting_values_name_both(argv, fragments):
    with pytest.raises(ConfigError) as err:
        given(*argv)
    assert all(f in str(err.value) for f in fragments), str(err.value)


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs", "1.5"], "config key 'epochs': expected an int, got '1.5'"),
    (["--amp", "maybe"], "expected a bool"),
    (["--image-size", "240"], "expected list of 2 int"),
    (["--image-size", "240", "424", "lr=1"], "put overrides before the options"),
    (["--test_num", "1"], "--test-runs N"),
    (["--train_clip", "3"], "--query-frames"),
    (["learning_rate=1"], "unknown config key 'learning_rate'"),
])
def test_bad_values_are_one_config_error(argv, fragment):
    with pytest.raises(ConfigError) as err:
        given(*argv)
    assert fragment in str(err.value)


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--learning_rate", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["--dataset", "coco"])          # choices of the dataset option


def test_config_file_is_the_base_and_the_command_line_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.1\ndataset: minivspw\n")
    values = given("--config", str(path), "--lr", "0.2", "--data-root", "V")
    assert values == {"epochs": 7, "lr": 0.2, "dataset": "minivspw", "minivspw_root": "V"}


def test_coexists_with_script_flags_through_exclude():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int)                       # a script's own flag
    with pytest.raises(argparse.ArgumentError):
        add_config_arguments(p)
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int)
    p.add_argument("--runs", type=int)
    add_config_arguments(p, exclude=("seed",), config_file=False, overrides=False)
    args = p.parse_args(["--seed", "3", "--runs", "2", "--lr", "0.5"])
    assert args.seed == 3 and args.runs == 2
    assert config_values_from_args(args) == {"lr": 0.5}
    with pytest.raises(SystemExit):
        p.parse_args(["--train_seed", "9"])                   # the excluded key's aliases go with it
    with pytest.raises(ValueError, match="unknown keys"):
        add_config_arguments(argparse.ArgumentParser(), exclude=("sed",))


def test_help_shows_every_option_with_its_default():
    text = " ".join(parser().format_help().split())          # argparse wraps lines
    assert "--image-size V [V ...], --image_size V [V ...], --input_size V [V ...]" in text
    assert "(2 values, as 240 424 or 240,424; default: 240 424)" in text
    assert "--epochs INT, --max_epoch INT training epochs (default: 100)" in text
    assert "Adam learning rate (default: 0.0005)" in text
    assert "--test_num" not in text                           # no-equivalent names stay out of --help


def test_the_training_docs_hold_the_current_alias_table():
    readme = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "Authors' option names" in readme
    assert alias_table_markdown() in readme


def test_a_key_value_override_given_twice_must_repeat_its_value():
    with pytest.raises(ConfigError) as err:               # the last one used to win silently
        given("epochs=2", "episodes_per_class=1", "episodes_per_class=3")
    assert "'episodes_per_class': episodes_per_class=1 and episodes_per_class=3" in str(err.value)
    assert given("epochs=2", "epochs=2") == {"epochs": 2}   # the same value twice is no conflict


def test_the_command_line_replaces_a_config_file_value_with_a_log_line(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.1\n")
    with caplog.at_level("WARNING", logger="config"):
        assert given("--config", str(path), "epochs=5", "--lr", "0.1") == {"epochs": 5, "lr": 0.1}
    assert [r.getMessage() for r in caplog.records] == [
        f"epochs=7 from the config file {path} is replaced by the command line's 5"]
