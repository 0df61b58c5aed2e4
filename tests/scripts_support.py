"""Helpers for the train.py / test.py tests: tiny synthetic data and in-process script runs."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from synthetic import write_synthetic_youtube_vis  # noqa: E402

IMAGE = 64                      # smallest size the model accepts: the ResNet-50 is the cost
# Three 1-frame clips (clip 3 draws 1 memory frame of 2 at random), 5 supports, CPU, no workers.
TINY = ["image_size=64,64", "query_frames=3", "clip_length=1", "memory_size=1",
        "episodes_per_class=1", "val_episodes_per_class=1", "val_batch_size=1", "num_workers=0",
        "epochs=1", "batch_size=1", "checkpoint_every_iters=0"]


def with_overrides(argv, *overrides: str) -> list:
    """``argv`` with ``key=value`` overrides in place of its ``key=value`` entries for the same keys
    (a key given twice with different values is an error on the command line)."""
    keys = {item.split("=", 1)[0] for item in overrides}
    return [item for item in argv if not (isinstance(item, str) and "=" in item and not item.startswith("-")
                                          and item.split("=", 1)[0] in keys)] + list(overrides)


def tiny(*overrides: str) -> list:
    """TINY with ``key=value`` overrides in place of its entries for the same keys."""
    return with_overrides(TINY, *overrides)


def write_dataset(root: str, num_categories: int = 4, frames: int = 8) -> str:
    """YouTube-VIS-format data: ``num_categories`` classes x 3 videos of ``frames`` 64x64 frames.

    Group 1 holds out class 1 (test/val) and trains on the others that exist.
    """
    return write_synthetic_youtube_vis(root, seed=0, videos_per_class=3, frames_per_video=frames,
                                       frame_size=(IMAGE, IMAGE), num_categories=num_categories)


TIMING_KEYS = ("data_time", "data_wait_fraction")   # wall-clock measurements: the only values a resume may change


def without_timings(records):
    """History records / metrics.jsonl lines without their wall-clock timing keys."""
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def metrics_lines(run_dir):
    """A run directory's metrics.jsonl, one dict per line."""
    with open(os.path.join(str(run_dir), "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def assert_same_run(a, b):
    """Two runs' last.pth hold the same weights, optimizer state, history and config (but the names)."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])
    # same losses and validation IoU
    assert without_timings(a["metrics"]["history"]) == without_timings(b["metrics"]["history"])
    assert {k: v for k, v in a["config"].items() if k != "run_name"} == \
        {k: v for k, v in b["config"].items() if k != "run_name"}


def load_script(name: str):
    """Import train.py / test.py by path (``test`` would clash with the standard library)."""
    spec = importlib.util.spec_from_file_location(f"vipmt_script_{name}", os.path.join(REPO, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script, argv):
    """Run a script's main like the command line does: returns the exit status.

    Afterwards the logging handlers the script set up are closed, as at the end of a process
    (they would write to this test's captured stderr, closed by the next test).
    """
    from vipmt.cli import run as run_main

    try:
        return run_main(script.main, [str(a) for a in argv])
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()


def error_line(script, argv, capsys) -> str:
    """Run a script that must refuse its input: exit status 2, exactly one ``error: ...`` line on stderr
    and no traceback. Returns that line."""
    status = run(script, argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
