"""Load a trained VIPMT from a checkpoint file: ours or the authors' {'state_dict': ...} files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from config.config import DEFAULTS
from models import VIPMT
from utils.checkpoint import is_our_checkpoint, load_checkpoint, load_model_state
from utils.runtime import resolve_device

SIZE_HINT = "If the model was trained at another size, pass that size (image_size=(H, W), --image-size H W)."


@dataclass(frozen=True)
class LoadedModel:
    model: VIPMT              # in eval mode, on the requested device
    config: dict | None       # the training config saved in our checkpoints; None for the authors' files
    description: str          # e.g. "runs/x/best.pth (ours, epoch 12)", for logs and reports


def load_trained_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                       image_size: Sequence[int] | None = None, trusted: bool = False) -> LoadedModel:
    """Build a VIPMT and load the weights of `path`.

    device: 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device. image_size (H, W): the model's
    input size; by default the one saved in our checkpoint's config, else the config default.
    trusted: allow files with arbitrary pickled objects (only for files you trust).
    Raises CheckpointError (missing, unreadable, or weights that do not fit: names the keys),
    ModelError (unsupported size) or UserError (device not available).
    """
    path = os.fspath(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    ckpt = load_checkpoint(path, trusted=trusted)
    ours = is_our_checkpoint(ckpt)
    saved = ckpt.get("config") if ours else None
    if image_size is None:
        image_size = (saved or {}).get("image_size") or DEFAULTS.image_size
    model = VIPMT(backbone_weights=None, image_size=tuple(image_size))
    load_model_state(model, ckpt["state_dict"], source=f"checkpoint {path!r}", hint=SIZE_HINT)
    epoch = ckpt.get("epoch")
    kind = "ours" if ours else "authors'/plain state dict"
    description = f"{path} ({kind}{'' if epoch is None else f', epoch {epoch}'})"
    return LoadedModel(model=model.to(device).eval(), config=saved, description=description)
