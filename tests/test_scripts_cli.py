"""train.py / test.py command lines: the paper's commands, every config key as an option, --help."""
import subprocess
import sys

import pytest

from scripts_support import REPO, load_script, run

train = load_script("train")
test_script = load_script("test")


def resolved(script, argv):
    from vipmt.cli import explicit_values, resolve_config

    args = script.build_parser().parse_args(argv)
    return args, resolve_config({}, explicit_values(args))


def test_the_papers_commands_parse_to_their_settings():
    args, cfg = resolved(train, ["--group", "1", "--batch_size", "4"])
    assert (cfg.group, cfg.batch_size) == (1, 4) and not args.resume
    args, cfg = resolved(train, ["--group", "2", "--batch_size", "2", "--max_epoch", "3", "--resume"])
    assert (cfg.group, cfg.batch_size, cfg.epochs) == (2, 2, 3) and args.resume
    args, cfg = resolved(test_script, ["--group", "3"])
    assert cfg.group == 3 and args.checkpoint is None
    # the script flags keep working next to the config options and key=value overrides
    args, cfg = resolved(train, ["--data-root", "d", "--resume-from", "x.pth", "--stop-after", "5",
                                 "--output-dir", "o", "--run-name", "r", "--seed", "3", "lr=1e-4"])
    assert (args.resume_from, args.stop_after) == ("x.pth", 5)
    assert (cfg.youtube_vis_root, cfg.output_dir, cfg.run_name, cfg.seed, cfg.lr) == ("d", "o", "r", 3, 1e-4)
    args, cfg = resolved(test_script, ["--checkpoint", "c.pth", "--runs", "2", "--output", "o.json",
                                       "--save-vis", "v", "--trust-checkpoint", "--image-size", "64", "112"])
    assert (args.checkpoint, args.runs, args.output, args.save_vis, args.trust_checkpoint) == \
        ("c.pth", 2, "o.json", "v", True)
    assert cfg.image_size == [64, 112]


@pytest.mark.parametrize("script, argv", [
    (train, ["--group", "1", "--batch_size", "4", "--help"]),
    (test_script, ["--group", "1", "--help"]),
])
def test_help_after_the_papers_options_shows_defaults_and_examples(script, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.build_parser().parse_args(argv)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size INT, --batch_size INT episodes per batch (per process under DDP) (default: 4)" in text
    assert "examples: python" in text and f"python {script.__name__.rsplit('_', 1)[1]}.py --group 1" in text


def test_abbreviated_options_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--resu"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --resu" in capsys.readouterr().err


def test_runs_and_test_runs_must_agree(tmp_path, capsys):
    assert run(test_script, ["--runs", "2", "--test-runs", "3", "--data-root", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "error: conflicting values for config key 'test_runs'" in err and "--runs 2" in err


@pytest.mark.slow
@pytest.mark.e2e
def test_help_runs_as_a_command():
    done = subprocess.run([sys.executable, "train.py", "--group", "1", "--batch_size", "4", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--resume-from CHECKPOINT" in done.stdout and not done.stderr


def test_key_values_split_by_an_option_are_one_short_error(tmp_path, capsys):
    # argparse used to print its 24-line usage before "unrecognized arguments: lr=1e-4"
    assert run(train, ["epochs=2", "--group", "1", "lr=1e-4", "--output-dir", tmp_path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: lr=1e-4: key=value overrides must stand together") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
