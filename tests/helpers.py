"""Shared test helpers: the golden cases (tests/reference_cases.py) and deterministic models of any size."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import subprocess

import pytest
import torch

import reference_cases
from models import VIPMT

reference_case = reference_cases  # the name the tests use for the case builder


def reference_model(seed: int = 0, image_size=(240, 424), train: bool = False) -> VIPMT:
    """A VIPMT with the reference case's deterministic weights. For sizes other than 240x424
    the score head's first fully connected layer is redrawn (same rule) at the new shape.
    Each call returns a new model (a copy of the last one built for the same seed and size)."""
    key = (seed, tuple(image_size))
    if _last_reference_model.get("key") != key:
        _last_reference_model.clear()                  # one model kept: ~0.5 GB at 240x424
        _last_reference_model.update(key=key, model=_build_reference_model(seed, image_size))
    model = copy.deepcopy(_last_reference_model["model"])
    model.train(train)
    if train:
        disable_dropout(model)
    return model


# Building one costs ~1.3 s of CPU (the model's own initialisation, then the reference draw over it);
# copying the last one built, ~0.1 s. The golden cases build the same 240x424 model over and over.
_last_reference_model: dict = {}


def _build_reference_model(seed: int, image_size) -> VIPMT:
    model = VIPMT(backbone_weights=None, image_size=image_size)
    state = reference_cases.reference_state_dict(seed)
    fc1 = model.score_head.fc1.weight
    if fc1.shape != state["score_head.fc1.weight"].shape:
        g = torch.Generator().manual_seed(seed)
        state["score_head.fc1.weight"] = torch.randn(fc1.shape, generator=g) * math.sqrt(1.0 / fc1.shape[1])
    model.load_state_dict(state, strict=True)
    return model.eval()


def disable_dropout(model: torch.nn.Module) -> None:
    """Set p = 0 on every dropout module, as the golden training cases were run."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d)):
            module.p = 0.0


@contextlib.contextmanager
def small_filesystem(path, size_kb: int):
    """A ``size_kb`` KiB tmpfs mounted on ``path`` (a new folder) for disk-full tests; skips the test
    where mounting is not allowed (not root). The disk-full tests that always run patch os.fsync."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_filesystem(path, leave_bytes: int) -> None:
    """Fill the file system holding ``path`` with a file ``.filler`` until ``leave_bytes`` are free."""
    filler = os.path.join(path, ".filler")
    if os.path.exists(filler):
        os.unlink(filler)
    free = shutil.disk_usage(path).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def fail_fsync_of(monkeypatch, path_part: str) -> None:
    """Make fsync raise ENOSPC for every file whose path contains ``path_part`` (found via /proc, so
    Linux only): a full disk as file systems with delayed allocation report it, where no small
    file system can be mounted."""
    import errno

    real_fsync = os.fsync

    def fsync(fd):
        if path_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
