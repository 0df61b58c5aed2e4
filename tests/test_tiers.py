"""The test tiers (pytest.ini, tests/conftest.py, scripts/run_tests.sh): markers are registered and a typo
is an error, a test over the time limit without the `slow` marker fails, and the quick tier
(`-m "not slow"`) keeps a test of every module that has a fast one; under pytest-xdist each module stays on one
worker, and the golden modules share one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Modules without a fast test: one expensive shared fixture, or only runs of several processes, pip,
# train.py with the real model or a benchmark. Every other module has a test in the quick tier.
ALL_SLOW_MODULES = {"test_grads_golden.py", "test_episode_ddp.py", "test_scripts_ddp.py", "test_packaging.py",
                    "test_authors_loop.py", "test_utils_runtime.py", "test_benchmark_test_profile.py"}


def pytest_in(folder: Path, *args: str, limit_s: float = 0.5, judged_load_per_core: float = 1000.0):
    """pytest on ``folder`` with the repository's pytest.ini and conftest hooks, the time limit set to
    ``limit_s`` (a stand-in conftest loads tests/conftest.py under another name and changes its limits)."""
    (folder / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {str(ROOT / 'tests' / 'conftest.py')!r})\n"
        "repo = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(repo)\n"
        f"repo.SLOW_TEST_S, repo.JUDGED_LOAD_PER_CORE = {limit_s}, {judged_load_per_core}\n"
        "pytest_runtest_makereport = repo.pytest_runtest_makereport\n"
        "pytest_terminal_summary = repo.pytest_terminal_summary\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pytest.ini"), "--rootdir", str(folder),
                           "-p", "no:cacheprovider", "-q", *args, str(folder)],
                          cwd=str(folder), capture_output=True, text=True, timeout=120)


TIMED_TESTS = """
import time
import pytest

@pytest.fixture(scope="module")
def shared():
    time.sleep(0.6)

def test_fast():
    pass

def test_unmarked_and_slow():
    time.sleep(0.6)

@pytest.mark.slow
def test_marked_and_slow():
    time.sleep(0.6)

def test_pays_for_the_shared_fixture(shared):
    pass

def test_uses_the_shared_fixture_later(shared):
    pass
"""


def test_an_unmarked_test_over_the_limit_fails_naming_itself(tmp_path):
    (tmp_path / "test_timed.py").write_text(TIMED_TESTS)
    done = pytest_in(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED "))
    # the setup of a module-scoped fixture counts for the first test that asks for it
    assert failed == ["test_timed.py::test_pays_for_the_shared_fixture", "test_timed.py::test_unmarked_and_slow"]
    assert "without the `slow` marker: mark it @pytest.mark.slow" in done.stdout
    assert "2 failed, 3 passed" in done.stdout


def test_on_a_loaded_machine_durations_are_not_judged_but_named(tmp_path):
    (tmp_path / "test_timed.py").write_text(TIMED_TESTS)
    done = pytest_in(tmp_path, judged_load_per_core=0.0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note: 2 unmarked test(s) took over 0 s while the machine was loaded" in done.stdout
    assert "test_timed.py::test_unmarked_and_slow" in done.stdout


def test_a_misspelt_marker_is_an_error(tmp_path):
    (tmp_path / "test_typo.py").write_text("import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    done = pytest_in(tmp_path)
    assert done.returncode != 0 and "'slwo' not found in `markers` configuration option" in done.stdout + done.stderr


def test_the_tiers_are_registered():
    ini = (ROOT / "pytest.ini").read_text()
    for marker in ("slow", "e2e", "ddp", "golden", "cuda"):
        assert f"\n    {marker}: " in ini
    script = (ROOT / "scripts" / "run_tests.sh").read_text()
    assert '-m "not slow"' in script and "--durations=15" in script


@pytest.mark.slow
def test_the_quick_tier_has_a_test_of_every_module_that_has_a_fast_one():
    """`run_tests.sh --quick` collects >= 150 tests, among them tests of every module but those listed
    as having no fast test."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "not slow", "tests"], cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    quick = [line for line in done.stdout.splitlines() if "::" in line]
    quick_modules = {Path(test.split("::")[0]).name for test in quick}
    modules = {path.name for path in (ROOT / "tests").glob("test_*.py")}
    assert len(quick) >= 150
    assert sorted(modules - quick_modules - ALL_SLOW_MODULES) == []


def test_the_golden_modules_share_a_worker_and_the_listed_modules_exist():
    import conftest

    golden = {conftest.worker_group(f"tests/{module}::test_x[case]") for module in conftest.SAME_WORKER}
    assert len(golden) == 1 and conftest.worker_group("tests/test_metrics.py::test_y") == "test_metrics.py"
    modules = {path.name for path in (ROOT / "tests").glob("test_*.py")}
    assert set(conftest.SAME_WORKER) <= modules          # a renamed module would silently leave its group
    assert set(conftest.LONGEST_FIRST) - golden <= modules


GROUPED_TESTS = """
import os
from pathlib import Path

def test_where():
    (Path(os.environ["WHERE_DIR"]) / (Path(__file__).stem + "_" + os.environ["PYTEST_XDIST_WORKER"])).touch()
"""


@pytest.mark.slow
def test_two_workers_keep_each_module_together_and_the_golden_ones_on_one(tmp_path):
    """scripts/run_tests.sh's `-n 2 --dist loadscope --no-loadscope-reorder` with tests/conftest.py's scheduler,
    on the installed pytest and pytest-xdist (their own --dist loadgroup stopped working with pytest 9)."""
    where = tmp_path / "where"
    where.mkdir()
    tests = tmp_path / "tests"
    tests.mkdir()
    names = ["test_grads_golden", "test_model_golden", "test_a", "test_b", "test_c"]
    for name in names:
        (tests / f"{name}.py").write_text(GROUPED_TESTS + "".join(
            f"\n\ndef test_{i}():\n    test_where()\n" for i in range(4)))
    (tests / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {str(ROOT / 'tests' / 'conftest.py')!r})\n"
        "repo = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(repo)\n"
        "pytest_xdist_make_scheduler = repo.pytest_xdist_make_scheduler\n"
        "pytest_collection_modifyitems = repo.pytest_collection_modifyitems\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pytest.ini"), "--rootdir", str(tmp_path),
                           "-p", "no:cacheprovider", "-q", "-n", "2", "--dist", "loadscope", "--no-loadscope-reorder",
                           "tests"], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, WHERE_DIR=str(where)))
    assert done.returncode == 0 and "25 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    workers = {}
    for marker in where.iterdir():
        module, worker = marker.name.rsplit("_", 1)
        workers.setdefault(module, set()).add(worker)
    assert sorted(workers) == sorted(names) and all(len(w) == 1 for w in workers.values()), workers
    assert workers["test_grads_golden"] == workers["test_model_golden"]
    assert len(set().union(*workers.values())) == 2                     # both workers had work
