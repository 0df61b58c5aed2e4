"""What produced a run: library versions and the code's git commit, for config.yaml and checkpoints.

A result can only be reproduced with the code and the numerics that made it: the same commit
(and no uncommitted edits), the same torch / CUDA build and the same numpy (the data pipeline's
random draws). :func:`environment_info` collects them as plain, YAML- and
``weights_only``-loadable values.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["UNKNOWN", "environment_info", "git_state"]

UNKNOWN = "unknown"          # the commit outside a git checkout (or without git)
REPO_ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 10


def _git(repo: Path, *args: str) -> Optional[str]:
    try:
        run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # no git binary, hung filesystem
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def git_state(repo: Path | str = REPO_ROOT) -> Dict[str, Any]:
    """{'git_commit': HEAD's hash or 'unknown', 'git_dirty': True if tracked files differ from
    HEAD, None when unknown}. Untracked files (run outputs, data) do not count as dirty."""
    repo = Path(repo)
    commit = _git(repo, "rev-parse", "--verify", "HEAD")
    if not commit:
        return {"git_commit": UNKNOWN, "git_dirty": None}
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def _code_state() -> Dict[str, Any]:
    # Once per process: the code that runs is the code imported at start, whatever is edited later.
    return git_state(REPO_ROOT)


def environment_info() -> Dict[str, Any]:
    """Versions and commit of this process, e.g. {'python': '3.11.9', 'torch': '2.4.1+cu121',
    'torchvision': '0.19.1+cu121', 'cuda': '12.1' (None for a CPU build), 'cudnn': 90100 (None),
    'numpy': '1.26.4', 'git_commit': '<40 hex>' or 'unknown', 'git_dirty': bool or None}."""
    try:
        import torchvision

        torchvision_version = str(torchvision.__version__)
    except ImportError:  # pragma: no cover - torchvision is a requirement
        torchvision_version = None
    cudnn = int(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that YAML and weights_only loading reject
        "torchvision": torchvision_version,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "numpy": str(np.__version__),
        **_code_state(),
    }
