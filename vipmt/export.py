"""A trained model to share: the weights, the settings and their integrity record, nothing to resume.

    python -m vipmt.export runs/youtube_vis_group1/best.pth vipmt_ytvis_group1.pth
    python -m vipmt.export runs/youtube_vis_group1/last.pth vipmt_ytvis_group1_fp16.pth --half

A checkpoint that train.py writes holds the optimizer's two tensors per trainable parameter, the
gradient scaler, the sampler and every rank's RNG state: what a resume needs, ~2.6x the weights.
The exported file is our weights-only checkpoint (``"contents": "weights"``, utils/checkpoint.py):
the state dict, the config the model was trained with (test.py, predict.py and
``Predictor.from_checkpoint`` take the image size, clip length, memory settings and support
shots from it), the epoch, best metric and metrics history, and the SHA-256 of every tensor,
which every load verifies. It loads wherever a checkpoint does (``--checkpoint OUT.pth``,
``Predictor.from_checkpoint``) with the same results, bit for bit; it cannot be resumed.

``--half`` stores the floating-point weights as float16 (half the size). Loading widens them back
to float32 and inference still runs in float32, so only the weights' rounding differs (11
significant bits instead of 24): masks and scores differ slightly from the full checkpoint's
(docs/api.md, "Sharing a model", has the measured agreement). A tensor whose values do not fit
float16 (beyond +-65504) stays float32, named in the output.

The file is written atomically (a failed write, a full disk included, leaves no file and any
earlier one intact), read back and verified; an existing OUT is replaced only with
``--overwrite``, and never the checkpoint being read.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from config import DEFAULTS
from utils.checkpoint import load_checkpoint, load_model_state, save_weights, strip_prefix
from utils.fileio import unwritable_reason
from utils.runtime import UserError

from .cli import HelpFormatter, run
from .loading import CHECKPOINT_HINT, WEIGHTS_DTYPE_KEY, saved_config

__all__ = ["ExportResult", "export_model", "main"]

EXPORTED_FROM_KEY = "exported_from"       # the source file's name, contents and environment (provenance)
FLOAT16_MAX = torch.finfo(torch.float16).max


@dataclass
class ExportResult:
    path: str
    bytes: int                                   # the exported file's size
    source_bytes: int                            # the checkpoint's size
    tensors: int
    weights_dtype: str                           # "float32" or "float16"
    kept_float32: List[str] = field(default_factory=list)   # --half: tensors that do not fit float16


def _check_destination(checkpoint: str, out: str, overwrite: bool) -> None:
    if os.path.isdir(out):
        raise UserError(f"OUT {out!r} is a directory; expected the path of the file to write (e.g. {out}/model.pth)")
    if os.path.exists(checkpoint) and os.path.exists(out) and os.path.samefile(checkpoint, out):
        raise UserError(f"OUT {out!r} is the checkpoint being exported; choose another file name (the export "
                        f"leaves out the optimizer state that a resume needs)")
    if os.path.lexists(out) and not overwrite:
        raise UserError(f"OUT {out!r} already exists; pass --overwrite to replace it, or choose another file name")
    problem = unwritable_reason(os.path.dirname(os.path.abspath(out)))
    if problem:
        raise UserError(f"cannot write {out!r}: {problem}")


def _half(state: Dict[str, torch.Tensor]) -> "tuple[Dict[str, torch.Tensor], List[str]]":
    """float32 (or wider) tensors as float16, except those with a value beyond float16's range."""
    halved, kept = {}, []
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype != torch.float16:
            if tensor.numel() and float(tensor.abs().max()) > FLOAT16_MAX:
                kept.append(name)
                halved[name] = tensor
            else:
                halved[name] = tensor.to(torch.float16)
        else:
            halved[name] = tensor
    return halved, kept


def export_model(checkpoint: str, out: str, *, half: bool = False, overwrite: bool = False,
                 trusted: bool = False) -> ExportResult:
    """Write the weights, settings and integrity record of ``checkpoint`` (ours or the authors') to ``out``.

    The weights must fit VIPMT at the checkpoint's image size (the authors' files: 240x424), as
    test.py and the Predictor will load them; CheckpointError otherwise, UserError for a bad
    ``out``, WriteError when the disk refuses the file (nothing written).
    """
    from models import VIPMT  # noqa: WPS433 - the network is a heavy import, kept out of --help

    checkpoint, out = os.fspath(checkpoint), os.fspath(out)
    _check_destination(checkpoint, out, overwrite)
    ckpt = load_checkpoint(checkpoint, trusted=trusted)        # integrity verified, weights finite
    config = saved_config(ckpt, checkpoint)                     # a bad saved value: CheckpointError
    state = dict(strip_prefix(ckpt["state_dict"]))
    image_size = tuple((config or {}).get("image_size") or DEFAULTS.image_size)
    load_model_state(VIPMT(backbone_weights=None, image_size=image_size), state,
                     source=f"checkpoint {checkpoint!r}", hint=CHECKPOINT_HINT)
    kept: List[str] = []
    if half:
        state, kept = _half(state)
    weights_dtype = "float16" if half else "float32"
    provenance: Dict[str, Any] = {"file": os.path.basename(checkpoint), "contents": ckpt.get("contents", "state_dict"),
                                  "bytes": os.path.getsize(checkpoint)}
    if ckpt.get("environment") is not None:
        provenance["environment"] = ckpt["environment"]
    epoch = ckpt.get("epoch")
    save_weights(out, model=state, epoch=None if epoch is None else int(epoch), config=config,
                 best_metric=ckpt.get("best_metric"), best_epoch=ckpt.get("best_epoch"),
                 metrics=ckpt.get("metrics") or {},
                 extra={WEIGHTS_DTYPE_KEY: weights_dtype, EXPORTED_FROM_KEY: provenance})
    written = load_checkpoint(out)                              # read back: the integrity record verified
    if list(written["state_dict"]) != list(state):
        raise UserError(f"{out!r} was written but does not read back with the same tensors; delete it")
    return ExportResult(path=out, bytes=os.path.getsize(out), source_bytes=os.path.getsize(checkpoint),
                        tensors=len(state), weights_dtype=weights_dtype, kept_float32=kept)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vipmt.export", description=__doc__.split("\n\n")[0],
                                     epilog="examples:\n" + "\n".join(
                                         line for line in __doc__.splitlines() if line.startswith("    python")),
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="our checkpoint (last.pth, best.pth, epoch_NNN.pth) "
                                                                 "or the authors' {'state_dict': ...} file")
    parser.add_argument("out", metavar="OUT.pth", help="the file to write")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16: half the size; inference still runs in float32, "
                             "from weights rounded to float16 (masks differ slightly, see docs/api.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint holding arbitrary pickled objects (only files you trust)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vipmt.export``: the command line, through the scripts' error boundary."""
    return run(_main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    result = export_model(args.checkpoint, args.out, half=args.half, overwrite=args.overwrite,
                          trusted=args.trust_checkpoint)
    note = (f"; {len(result.kept_float32)} tensor(s) beyond float16's range kept as float32: "
            f"{', '.join(result.kept_float32)}" if result.kept_float32 else "")
    print(f"wrote {result.path}: {_megabytes(result.bytes)} ({result.tensors} tensors, {result.weights_dtype} "
          f"weights, settings and SHA-256 record; the checkpoint is {_megabytes(result.source_bytes)}){note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
