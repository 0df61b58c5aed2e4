"""reuse_freed_memory: large freed buffers are reused instead of being zero-filled again.

Process-wide, so it is checked in a fresh interpreter.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUFFER_FLOATS = 25_000_000          # 100 MB, above glibc's 32 MB limit for keeping freed blocks
PAGES_PER_ROUND = 3 * BUFFER_FLOATS * 4 // 4096

SCRIPT = f"""
import resource
import sys
import torch
from utils.runtime import reuse_freed_memory

changed = reuse_freed_memory() if sys.argv[1] == "reuse" else None

def page_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        buffer = torch.ones({BUFFER_FLOATS})
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

rounds = [page_faults() for _ in range(8)]   # glibc takes up to 4 rounds to settle where they live
print(max(rounds[-3:]), changed)
"""


def page_faults(mode: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    faults, changed = result.stdout.split()
    return int(faults), changed


@pytest.mark.slow
def test_freed_buffers_are_reused_without_page_faults():
    """Called at start-up, as the inference scripts do."""
    if not sys.platform.startswith("linux"):
        pytest.skip("page-fault counts are read from getrusage on Linux")
    default, _ = page_faults("default")
    reused, changed = page_faults("reuse")
    if changed == "False":
        pytest.skip("the C library is not glibc")
    assert default > PAGES_PER_ROUND // 2       # every round zero-fills the buffers again (worst of the last 3)
    assert reused < PAGES_PER_ROUND // 20
