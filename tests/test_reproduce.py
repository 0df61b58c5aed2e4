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
    # a run trained at lr=5e-4 is not tabulated as lr=0.01 (nor continued at it)
    (["lr=0.01"], "holds a run trained with lr=0.0005 (its last.pth), but this command asks lr=0.01"),
    (["--folds", "1", "2", "lr=0.01"], "but this command asks lr=0.01"),   # the override after the folds
])
def test_refusals_are_one_error_line_and_touch_nothing(reproduced, capsys, extra, message):
    argv, out, before = reproduced
    assert run(reproduce, argv + extra) == 2
    err = _error_line(capsys.readouterr().err)
    assert message in err
    if extra[0] == "seed=7":
        assert "cannot change seed (42 -> 7" in err
    if "lr=0.01" in extra:                        # the options: the run's value, or another place to train
        assert "Give the run's values (lr=0.0005)" in err and "choose another --output-dir" in err
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


def _copy(out, dest):
    """The fixture's output folder at ``dest``: checkpoints hard-linked (reproduce only reads them or
    replaces them atomically), every other file copied, so that a test can change them."""
    import shutil

    def copy(src, dst):
        return os.link(src, dst) if src.endswith(".pth") else shutil.copy2(src, dst)

    shutil.copytree(out, dest, copy_function=copy)
    return dest


def _at(argv, out):
    """``argv`` writing into ``out`` (--output-dir) instead."""
    index = argv.index("--output-dir")
    return argv[:index + 1] + [out] + argv[index + 2:]


@pytest.mark.slow
def test_a_narrower_folds_keeps_the_other_folds_of_the_table_or_refuses_to_drop_them(reproduced, tmp_path, capsys):
    argv, out, _ = reproduced
    out = _copy(out, tmp_path / "out")
    table = json.loads((out / "reproduce_youtube_vis/results.json").read_text())
    assert run(reproduce, _at(argv, out) + ["--folds", "1"]) == 0
    narrower = json.loads((out / "reproduce_youtube_vis/results.json").read_text())
    def numbers(results):                         # the table but where its files are (this copy's)
        return {g: {k: v for k, v in fold.items() if k != "test_results"} for g, fold in results["folds"].items()}

    assert (numbers(narrower), narrower["mean"]) == (numbers(table), table["mean"])     # fold 2 kept, from its files
    assert narrower["folds"]["2"]["test_results"] == str(out / "youtube_vis_group2/test/test_best_seeds42-43.json")
    assert narrower["config"]["folds"] == [1, 2] and "| | Fold-1 | Fold-2 | Mean |" in \
        (out / "reproduce_youtube_vis/results.md").read_text()
    assert "fold 2: kept in the table (not in --folds)" in (out / "reproduce_youtube_vis/reproduce.log").read_text()

    os.remove(out / "youtube_vis_group2/test/test_best_seeds42-43.json")       # fold 2 can no longer be kept
    capsys.readouterr()
    assert run(reproduce, _at(argv, out) + ["--folds", "1"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert "tabulates folds 2 too" in err and "fold 2: no test results" in err
    assert "(--folds 1 2)" in err and "--drop-other-folds" in err
    assert json.loads((out / "reproduce_youtube_vis/results.json").read_text()) == narrower     # kept as it was
    assert run(reproduce, _at(argv, out) + ["--folds", "1", "--drop-other-folds"]) == 0
    assert list(json.loads((out / "reproduce_youtube_vis/results.json").read_text())["folds"]) == ["1"]


@pytest.mark.slow
def test_a_test_json_of_the_wrong_shape_is_named_by_collect_and_tested_again(reproduced, tmp_path, capsys):
    argv, out, _ = reproduced
    out = _copy(out, tmp_path / "out")
    bad = {1: "[]", 2: '{"config": {}, "runs": []}'}
    for group, text in bad.items():
        (out / f"youtube_vis_group{group}/test/test_best_seeds42-43.json").write_text(text)
    assert run(reproduce, _at(argv, out) + ["--collect"]) == 2
    err = _error_line(capsys.readouterr().err)
    first = out / "youtube_vis_group1/test/test_best_seeds42-43.json"
    assert f"fold 1: the test results {str(first)!r} are not usable: it holds a list" in err
    assert "fold 2: the test results" in err and "its 'aggregate' is missing" in err
    assert "Run reproduce.py --folds 1 2 without --collect" in err
    assert run(reproduce, _at(argv, out) + ["--folds", "1", "--drop-other-folds"]) == 0     # fold 1 tested again
    assert json.loads(first.read_text())["aggregate"]["runs"] == RUNS
    assert "(the test results" in (out / "reproduce_youtube_vis/reproduce.log").read_text()


@pytest.mark.slow
def test_a_damaged_fold_last_pth_says_how_to_go_on(reproduced, tmp_path, capsys):
    argv, out, _ = reproduced
    out = _copy(out, tmp_path / "out")
    last = out / "youtube_vis_group1/last.pth"
    head = last.read_bytes()[:100_000]
    os.remove(last)                               # a hard link: the fixture's file stays whole
    last.write_bytes(head)
    assert run(reproduce, _at(argv, out)) == 2
    err = _error_line(capsys.readouterr().err)
    assert f"fold 1: its last.pth {str(last)!r} is corrupt or truncated" in err and "Copy or download" not in err
    assert "Move it away" in err and f"--resume-from {out / 'youtube_vis_group1/best.pth'}" in err
    assert "python train.py --group 1 " in err and "to train fold 1 anew" in err


@pytest.mark.slow
def test_a_full_disk_when_a_log_is_flushed_or_closed_is_one_warning_and_the_table_is_made(reproduced, monkeypatch,
                                                                                           capsys):
    """reproduce.log's lines cannot be flushed (a full disk), also when reproduce moves on to a fold's log:
    one warning naming the file, no traceback; the log is a by-product, so the table is still made
    (the same numbers) and the runs are untouched."""
    import errno
    import io

    from utils.log import QuietFileHandler

    class FullDisk(io.StringIO):
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    argv, out, before = reproduced
    table = json.loads((out / "reproduce_youtube_vis/results.json").read_text())
    monkeypatch.setattr(QuietFileHandler, "_open", lambda self: FullDisk())
    assert run(reproduce, argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    log = str(out / "reproduce_youtube_vis/reproduce.log")
    assert f"warning: cannot write the log file {log!r} (No space left on device); its later lines are lost" in err
    assert json.loads((out / "reproduce_youtube_vis/results.json").read_text())["folds"] == table["folds"]
    assert _tree_state(out) == before
