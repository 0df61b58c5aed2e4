"""Check a downloaded backbone weights file before training with it.

    python -m models.check_weights pretrain_model/resnet50_v2.pth

Prints one line per missing, unexpected or wrongly shaped tensor, then a summary. Exit status:
0 the file fits the deep-stem ResNet-50, 1 it was read but does not fit, 2 it is absent or not a
readable PyTorch state dict. Entries the backbone does not use (the ImageNet classifier `fc.*`,
batch-norm `num_batches_tracked` counters) are listed as ignored and are not errors.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Sequence

from utils.runtime import run_cli

from .backbone import WEIGHTS_FILE, WEIGHTS_URL, compare_with_backbone, read_weights_file
from .errors import ModelError

EXIT_DOES_NOT_FIT = 1
HASH_CHUNK_BYTES = 1 << 20


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(side) for side in shape) + "]"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(path: str) -> "tuple[bool, list[str]]":
    """(fits, report lines) for a weights file; ModelError when it cannot be read at all."""
    state, ignored = read_weights_file(path)
    missing, unexpected, wrong_shape = compare_with_backbone(state)
    lines = [f"missing: {name}" for name in missing]
    lines += [f"unexpected: {name}" for name in unexpected]
    lines += [f"wrong shape: {name}: file {_shape(found)}, expected {_shape(want)}"
              for name, found, want in wrong_shape]
    fits = not lines
    if ignored:
        lines.append(f"ignored ({len(ignored)}, not used by the backbone): "
                     + ", ".join(ignored[:3]) + (" ..." if len(ignored) > 3 else ""))
    lines.append(f"sha256 {sha256_of(path)}")
    if fits:
        lines.append(f"ok: {path} fits the deep-stem ResNet-50 ({len(state)} tensors)")
    else:
        lines.append(f"error: {path} does not fit the deep-stem ResNet-50 ({len(missing)} missing, "
                     f"{len(unexpected)} unexpected, {len(wrong_shape)} wrong shape); expected the "
                     f"'resnet50_v2.pth' of {WEIGHTS_URL} (see pretrain_model/README.md)")
    return fits, lines


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.check_weights",
        description="Check that a file holds the deep-stem ResNet-50 ImageNet weights VIPMT's backbone "
                    f"loads (download: {WEIGHTS_URL}). Exit 0 fits, 1 does not fit, 2 unreadable.")
    parser.add_argument("path", nargs="?", default=WEIGHTS_FILE, help=f"weights file (default {WEIGHTS_FILE})")
    args = parser.parse_args(argv)
    fits, lines = check_weights(args.path)
    for line in lines:
        print(line, file=sys.stdout if fits or not line.startswith("error:") else sys.stderr)
    return 0 if fits else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(run_cli(main, None, (ModelError,)))
