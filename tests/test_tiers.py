"""The test tiers (pytest.ini, tests/conftest.py, scripts/run_tests.sh): markers are registered and a typo
is an error, a test over the time limit without the `slow` marker fails, and the quick tier
(`-m "not slow"`) keeps a test of every module that has a fast one."""
from __future__ import annotations

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
