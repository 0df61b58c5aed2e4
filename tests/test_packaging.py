"""pyproject.toml: `pip install -e .` lets a notebook anywhere `from vipmt import Predictor`, and
installs no generic top-level name (utils, config, models, dataset) that could shadow another's."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]      # a virtual environment and pip install -e .


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with this repository installed editable, offline; the
    project's environment supplies the dependencies (torch, ...) through a .pth file."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-build-isolation", "--no-index", "--quiet", "-e", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def run_in(folder: Path, python: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_a_notebook_anywhere_imports_the_predictor(installed, tmp_path):
    done = run_in(tmp_path, installed, "\n".join([
        "import importlib.util",
        "print([importlib.util.find_spec(n) for n in ('utils', 'config', 'models', 'dataset')])",
        "from vipmt import Predictor",
        "import utils, vipmt.predictor",
        "print(Predictor.__name__, utils.__file__, vipmt.predictor.__file__)"]))
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = done.stdout.strip().splitlines()
    assert before == "[None, None, None, None]"          # nothing generic is installed
    assert after == f"Predictor {ROOT / 'utils' / '__init__.py'} {ROOT / 'vipmt' / 'predictor.py'}"
    assert not list(ROOT.glob("*.egg-info"))              # the install wrote nothing into the checkout


def test_a_notebooks_own_utils_is_not_shadowed(installed, tmp_path):
    (tmp_path / "utils.py").write_text("MINE = True\n")
    done = run_in(tmp_path, installed, "import utils\nassert utils.MINE\nfrom vipmt import Predictor")
    assert done.returncode == 1
    assert (f"vipmt needs its own top-level package 'utils' ({ROOT / 'utils'}), but 'utils' was already imported "
            f"from {tmp_path / 'utils.py'}. Rename or move that 'utils'") in done.stderr
