import os
import shutil
import sys
from pathlib import Path

import pytest

# OpenMP threads that wait for work sleep instead of spinning. Set before torch loads libgomp (the test
# modules import it after this file), inherited by every process a test starts. The 2-core machine is
# a VM whose cores are also busy elsewhere: there a spinning thread burns the time its partner needs.
# Measured at load 8 with torch's 2 threads: a 64x112 training episode 7.5 s instead of 67 s (CPU 3.7 s
# instead of 24 s), a 240x424 golden case 32 s instead of 62 s. Results do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# A pytest-xdist worker (scripts/run_tests.sh runs one per core) takes its share of the cores: two
# workers of 2 threads each on 2 cores wait for each other's threads. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, _cpus() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# The tiers' rule (pytest.ini): a test that takes longer than this on the idle 2-core machine must carry
# the `slow` marker, which keeps it out of `run_tests.sh --quick`.
SLOW_TEST_S = 60.0


# Under pytest-xdist (scripts/run_tests.sh: -n 2 --dist loadscope): each module runs on one worker, so that
# its module-scoped fixtures are built once, and the golden modules on the same one: their peaks (9.7 GB
# and 6.2 GB resident, measured) must not add up on a 24 GB machine.
SAME_WORKER = {"test_grads_golden.py": "golden", "test_model_golden.py": "golden"}
# The longest groups start first (--no-loadscope-reorder keeps this order), so that no worker is left
# alone with one of them at the end. Only the order changes: a module missing here just starts later.
LONGEST_FIRST = ("golden", "test_scripts_ddp.py", "test_episode_ddp.py", "test_reproduce.py", "test_scripts_train.py",
                 "test_predict.py", "test_scripts_test.py", "test_engine.py", "test_shared_features.py",
                 "test_export.py")


def worker_group(nodeid: str) -> str:
    """The group of the test ``nodeid`` (``tests/test_x.py::test_y[...]``): its module, or the group the
    module shares (SAME_WORKER)."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return SAME_WORKER.get(module, module)


@pytest.hookimpl(optionalhook=True)      # a hook of pytest-xdist: unknown where it is not installed
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        """--dist loadscope with the modules of SAME_WORKER in one scope. (The built-in --dist loadgroup
        reads marks into test ids, which pytest 9 no longer lets it change.)"""

        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config, items):
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):     # a worker's collection: the order the scopes are handed out
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(worker_group(item.nodeid), len(rank)))   # stable within a module
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Durations are judged only while the 1-minute load average stays at most this many per core: beside
# other work they say little (tests/test_episode_ddp.py, two processes, took 807 s at load 13 on 2
# cores and 54 s at load 4), and the rule is about CI's run of the whole suite alone.
# A test on the idle machine adds at most about 2 per core itself (its threads, its workers).
JUDGED_LOAD_PER_CORE = 2.0


def unmarked_slow_test(item, setup_s: float, call_s: float, loads: list) -> str | None:
    """The failure message for a test without the `slow` marker that took more than SLOW_TEST_S, else None.

    Counted: the test's setup (its fixtures, module- and session-scoped ones included when it is the first
    to ask for them: a test that pays for a shared fixture is slow where it is selected) plus its call, not
    its teardown. Not judged (None) while the load was above JUDGED_LOAD_PER_CORE per core."""
    if "slow" in item.keywords or setup_s + call_s <= SLOW_TEST_S:
        return None
    cpus = _cpus()
    if max(loads) > JUDGED_LOAD_PER_CORE * cpus:
        item.config.stash.setdefault(UNJUDGED, []).append(item.nodeid)
        return None
    return (f"{item.nodeid} took {setup_s + call_s:.0f} s (setup {setup_s:.0f} s + call {call_s:.0f} s, load "
            f"{max(loads):.1f} on {cpus} cores), over {SLOW_TEST_S:.0f} s without the `slow` marker: mark it "
            f"@pytest.mark.slow (out of --quick) or make it faster")


UNJUDGED = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config):
    unjudged = config.stash.get(UNJUDGED, [])
    if unjudged:
        terminalreporter.write_line(f"note: {len(unjudged)} unmarked test(s) took over {SLOW_TEST_S:.0f} s while the "
                                    f"machine was loaded (over {JUDGED_LOAD_PER_CORE:.0f} per core), not judged: "
                                    + ", ".join(unjudged))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "setup":
        item._setup_timing = (call.duration, os.getloadavg()[0])
    elif call.when == "call" and report.passed:
        setup_s, setup_load = getattr(item, "_setup_timing", (0.0, 0.0))
        message = unmarked_slow_test(item, setup_s, call.duration, [setup_load, os.getloadavg()[0]])
        if message is not None:
            report.outcome, report.longrepr = "failed", message
    if report.failed and getattr(item, "module", None) is not None:
        item.module._a_test_failed = True
    return report


@pytest.fixture(scope="module", autouse=True)
def _remove_module_temporaries(request, tmp_path_factory):
    """Delete what a module's fixtures wrote under pytest's temp folder (datasets, training runs with
    ~1 GB checkpoints) once the module is done, unless one of its tests failed (kept for a look)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if not getattr(request.module, "_a_test_failed", False):
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)

