"""Writing a dataset tree safely: staged in a sibling folder, renamed into place at the end.

An interrupted run leaves no half-written dataset. A ``synthetic.json`` marker records the
parameters; writing again with the same parameters is a no-op, other parameters need
``overwrite=True`` (which only ever deletes a folder carrying the marker).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Sequence

import cv2
import numpy as np

from dataset.errors import DatasetError
from utils.fileio import atomic_write_json, write_file_checked

logger = logging.getLogger(__name__)

MARKER_FILE = "synthetic.json"
JPEG_QUALITY = 92
MIN_FRAME_SIDE = 16


def prepare_root(root: str, params: dict, overwrite: bool) -> str | None:
    """Return a fresh staging folder, or None when ``root`` already holds these parameters."""
    marker = os.path.join(root, MARKER_FILE)
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        existing = None
        if os.path.isfile(marker):
            try:
                with open(marker) as handle:
                    existing = json.load(handle)
            except (OSError, ValueError):
                existing = None
        if existing == params:
            logger.info("%s already holds this synthetic dataset; nothing to write", root)
            return None
        if existing is None:
            raise DatasetError(f"{root} exists and is not a synthetic dataset written by "
                               f"the synthetic package; choose an empty or new folder")
        if not overwrite:
            raise DatasetError(f"{root} holds a synthetic dataset written with other parameters "
                               f"({existing}); pass overwrite=True (--overwrite) or another folder")
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(root))}.writing-{os.getpid()}")
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    return staging


def _commit_root(staging: str, root: str, params: dict) -> None:
    atomic_write_json(os.path.join(staging, MARKER_FILE), params, indent=1)
    if os.path.exists(root):
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        else:
            shutil.rmtree(root)  # only reached for a marked synthetic dataset (see prepare_root)
    os.replace(staging, root)


@contextlib.contextmanager
def staged_tree(staging: str, root: str, params: dict, description: str):
    """Build the tree in ``staging``; on success move it to ``root`` and log "wrote <description> <root>
    (<videos> videos) in <s> s" (the block sets ``videos`` in the dict it gets), on any failure delete it."""
    start, report = time.perf_counter(), {"videos": 0}
    try:
        yield report
        _commit_root(staging, root, params)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s %s (%d videos) in %.1f s", description, root, report["videos"],
                time.perf_counter() - start)


def write_jpeg(path: str, image_rgb: np.ndarray) -> None:
    ok, payload = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"cannot encode {path} as JPEG")
    write_file_checked(path, payload.tobytes(), fsync=False)      # a full disk: WriteError naming the file


def write_png(path: str, labels: np.ndarray) -> None:
    ok, payload = cv2.imencode(".png", labels.astype(np.uint8))
    if not ok:
        raise DatasetError(f"cannot encode {path} as PNG")
    write_file_checked(path, payload.tobytes(), fsync=False)      # a full disk: WriteError naming the file


def check_frame_size(frame_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in frame_size)
    except (TypeError, ValueError):
        raise DatasetError(f"frame_size must be (height, width), got {frame_size!r}") from None
    if height < MIN_FRAME_SIDE or width < MIN_FRAME_SIDE:
        raise DatasetError(f"frame_size {height}x{width} (height x width) is too small: each side at least "
                           f"{MIN_FRAME_SIDE} pixels")
    return height, width

