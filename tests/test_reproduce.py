"""reproduce.py end to end on tiny synthetic data: two folds trained and tested, results.json / results.md,
a rerun that trains and tests nothing, --collect, and the refusals."""
import json
import os

import numpy as np
import pytest

from scripts_support import load_script, run, tiny, write_dataset

reproduce = load_script("reproduce")
RUNS = 2


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """``reproduce.py --folds 1 2`` on 2 classes (each fold trains one step on the other class and tests
    its own class's videos, 3 frames each) with 2 test runs; returns (arguments, output dir, stat of every
    file of the two run directories right after)."""
    root = tmp_path_factory.mktemp("reproduce")
    data = write_dataset(str(root / "ytvis"), num_categories=2, frames=3)
    argv = ["--folds", "1", "2", "--data-root", data, "--device", "cpu", "--backbone-weights", "none",
            "--output-dir", root / "out", "--test-runs", str(RUNS)] + tiny()
    assert run(reproduce, argv) == 0
    return argv, root / "out", _tree_state(root / "out")


def _tree_state(out):
    """{path: (inode, size, mtime_ns)} of every file in the fold run directories: an atomic rewrite changes
    the inode, an append the size and mtime."""
    state = {}
    for group in (1, 2):
        for folder, _, files in os.walk(out / f"youtube_vis_group{group}"):
            for name in files:
                st = os.stat(os.path.join(folder, name))
                state[os.path.join(folder, name)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return state


def _error_line(stderr):
    """The one ``error: ...`` line (log lines may come before it), and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def _test_results(out, group):
    return json.loads((out / f"youtube_vis_group{group}/test/test_best_seeds42-43.json").read_text())


@pytest.mark.slow
@pytest.mark.e2e
def test_two_folds_give_the_table_and_their_mean(reproduced):
    _, out, _ = reproduced
    results = json.loads((out / "reproduce_youtube_vis/results.json").read_text())
    assert list(results["folds"]) == ["1", "2"] and results["test_runs"] == RUNS and results["seeds"] == [42, 43]
    assert results["metrics"] == ["J", "F", "class_iou", "VC_7"]
    for group in (1, 2):                          # each fold: its test's mean over classes, over the test runs
        test = _test_results(out, group)
        assert test["group"] == group and test["aggregate"]["runs"] == RUNS and "epoch 1" in test["checkpoint"]
        for key in ("J", "F", "class_iou"):
            per_run = [r["mean"][key] for r in test["runs"]]
            assert results["folds"][str(group)][key]["mean"] == pytest.approx(np.mean(per_run))
            assert results["folds"][str(group)][key]["std"] == pytest.approx(np.std(per_run))
        # 3-frame videos have no 7-frame window: VC_7 is undefined in every run, and stays so
        assert [r["mean"]["VC_7"] for r in test["runs"]] == [None, None]
        assert results["folds"][str(group)]["VC_7"] == {"mean": None, "std": None}
    assert results["mean"]["VC_7"] == {"mean": None, "std": None}
    for key in ("J", "F", "class_iou"):           # the mean column: the plain mean of the folds
        folds = [results["folds"][g][key]["mean"] for g in ("1", "2")]
        assert results["mean"][key]["mean"] == pytest.approx(sum(folds) / 2)
        run_means = [np.mean([_test_results(out, g)["runs"][r]["mean"][key] for g in (1, 2)]) for r in range(RUNS)]
        assert results["mean"][key]["std"] == pytest.approx(np.std(run_means))
    assert results["config"]["folds"] == [1, 2] and results["config"]["image_size"] == [64, 64]
    assert results["commit"] and results["seconds"] >= 0
    assert results["commands"][0].startswith("python reproduce.py --folds 1 2")

    md = (out / "reproduce_youtube_vis/results.md").read_text()
    assert "| | Fold-1 | Fold-2 | Mean |" in md

    def cell(stat):
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"

    for key in ("J", "F"):
        row = [cell(results["folds"][g][key]) for g in ("1", "2")] + [cell(results["mean"][key])]
        assert f"| {key} | " + " | ".join(row) + " |" in md
    assert "python reproduce.py --folds 1 2" in md and "python train.py --group 2" in md
    log = (out / "reproduce_youtube_vis/reproduce.log").read_text()
    assert "fold 1 (1/2): training in" in log and "(new run)" in log and "fold 2 (2/2): testing" in log


@pytest.mark.slow
@pytest.mark.e2e
def test_a_rerun_trains_and_tests_nothing_and_rewrites_no_file_of_the_runs(reproduced):
    argv, out, before = reproduced
    table = json.loads((out / "reproduce_youtube_vis/results.json").read_text())
    assert run(reproduce, argv) == 0
    assert _tree_state(out) == before             # checkpoints, logs, test results: not one file touched
    log = (out / "reproduce_youtube_vis/reproduce.log").read_text()
    assert log.count("fold 2 (2/2): training finished earlier") == 1
    assert log.count("fold 1 (1/2): test results of best.pth are current: reusing") == 1
    again = json.loads((out / "reproduce_youtube_vis/results.json").read_text())
    assert (again["folds"], again["mean"]) == (table["folds"], table["mean"])


@pytest.mark.slow
@pytest.mark.e2e
def test_collect_assembles_finished_folds_and_names_the_missing_ones(reproduced, capsys):
    argv, out, before = reproduced
    os.remove(out / "reproduce_youtube_vis/results.md")
    assert run(reproduce, argv + ["--collect"]) == 0
    assert "| J | " in (out / "reproduce_youtube_vis/results.md").read_text()
    capsys.readouterr()
    assert run(reproduce, argv + ["--collect", "--folds", "1", "3", "4"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("error: --collect: fold 3: training not started") and "fold 4: training not" in err
    assert "fold 1" not in err
    assert _tree_state(out) == before


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("extra, message", [
    (["--group", "1"], "reproduce.py takes its folds from --folds"),
    (["--split", "0"], "group=1, e.g. from --group or --split"),
    (["--folds", "2", "5"], "--folds: expected fold numbers 1..4, got [2, 5]"),
    (["--folds", "1", "1"], "--folds lists a fold twice"),
    (["--run-name", "x"], "drop --run-name"),
    (["seed=7", "--folds", "1"], "fold 1: "),            # the finished run was trained with seed 42
])
def test_refusals_are_one_error_line_and_touch_nothing(reproduced, capsys, extra, message):
    argv, out, before = reproduced
    assert run(reproduce, argv + extra) == 2
    err = _error_line(capsys.readouterr().err)
    assert message in err
    if extra[0] == "seed=7":
        assert "cannot change seed (42 -> 7" in err
    assert _tree_state(out) == before


def test_the_slurm_job_script_parses():
    import subprocess

    from scripts_support import REPO

    script = os.path.join(REPO, "scripts", "slurm_fold.sbatch")
    assert subprocess.run(["bash", "-n", script], capture_output=True, text=True).returncode == 0
    text = open(script).read()
    assert "#SBATCH --requeue" in text and "--folds \"$fold\"" in text and "scontrol requeue" in text


def test_the_command_lines_parse_as_train_py_s(capsys):
    from config.cli import explicit_values

    args = reproduce.build_parser().parse_args(["--folds", "3", "1", "--test-runs", "5", "--batch_size", "2",
                                                "--max_epoch", "3", "lr=1e-4"])
    assert args.folds == [3, 1] and not args.collect
    assert explicit_values(args) == {"test_runs": 5, "batch_size": 2, "epochs": 3, "lr": 1e-4}
    assert reproduce.build_parser().parse_args([]).folds == [1, 2, 3, 4]
    train = load_script("train")
    assert train.build_parser().parse_args(["--auto-resume"]).auto_resume
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--auto-resume", "--resume"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
