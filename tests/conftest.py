import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
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
