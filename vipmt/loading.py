"""The one loader of trained models, for test.py, predict.py, demo.py and the Python API."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from config import DEFAULTS, ConfigError, check_saved_config
from utils.checkpoint import CheckpointError, is_our_checkpoint, load_checkpoint, load_model_state
from utils.runtime import resolve_device

__all__ = ["CHECKPOINT_HINT", "LoadedModel", "load_trained_model", "saved_config", "WEIGHTS_DTYPE_KEY"]

WEIGHTS_DTYPE_KEY = "weights_dtype"   # "float16" in a file of `python -m vipmt.export --half` (loaded as float32)

CHECKPOINT_HINT = ("Expected a VIPMT checkpoint with the reference parameter names (ours, or the authors' "
                   "{'state_dict': ...} file). The score head's size depends on the image size: the "
                   "authors' checkpoints need image_size=240,424.")


@dataclass
class LoadedModel:
    """A trained VIPMT ready for inference."""
    model: torch.nn.Module            # VIPMT in eval mode, on the requested device
    config: Optional[Dict[str, Any]]  # the config saved in our checkpoints; None for the authors' files
    description: str                  # e.g. "runs/x/best.pth (ours, epoch 12)", for logs and result files


def saved_config(ckpt: Mapping[str, Any], path: str) -> Optional[Dict[str, Any]]:
    """The config saved in our checkpoint ``ckpt`` (read from ``path``), checked key by key as a config
    file's (None for the authors' files, which have none). A bad value is a CheckpointError naming
    the checkpoint and the key: it comes from the file, not from the command line."""
    if not is_our_checkpoint(ckpt):
        return None
    saved = ckpt.get("config")
    try:
        check_saved_config(saved)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path!r} holds an invalid saved config: {exc}. The checkpoint's "
                              f"config was changed after training wrote it (or by another program); use "
                              f"another checkpoint, or correct that key in it") from None
    return saved


def load_trained_model(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu",
                       image_size: Optional[Sequence[int]] = None, trusted: bool = False) -> LoadedModel:
    """Load our checkpoint, the authors' ``{'state_dict': ...}`` file or a bare state dict.

    The model is built for ``image_size`` (H, W); None takes the size saved in our checkpoint's
    config, else the default 240x424 (the authors' size). ``device``: 'auto', 'cpu', 'cuda',
    'cuda:N' or a torch.device. ``trusted=True`` allows files that
    hold arbitrary pickled objects. A missing or unreadable file, or weights that do not fit
    (every missing / unexpected / wrongly shaped parameter named), raise CheckpointError.
    """
    from models import VIPMT  # noqa: WPS433 - keeps `import vipmt.loading` light for --help

    path = os.fspath(path)
    device = device if isinstance(device, torch.device) else resolve_device(str(device))
    ckpt = load_checkpoint(path, trusted=trusted)
    ours = is_our_checkpoint(ckpt)
    saved = saved_config(ckpt, path)
    if image_size is None:
        image_size = (saved or {}).get("image_size") or DEFAULTS.image_size
    model = VIPMT(backbone_weights=None, image_size=tuple(image_size))   # the checkpoint holds the backbone
    load_model_state(model, ckpt["state_dict"], source=f"checkpoint {path!r}", hint=CHECKPOINT_HINT)
    epoch = ckpt.get("epoch")
    kind = "ours" if ours else "authors'/plain state dict"
    halved = ", float16 weights" if ours and ckpt.get(WEIGHTS_DTYPE_KEY) == "float16" else ""
    description = f"{path} ({kind}{'' if epoch is None else f', epoch {epoch}'}{halved})"
    return LoadedModel(model=model.to(device).eval(), config=saved, description=description)
