"""The one loader of trained models, for test.py, predict.py, demo.py and the Python API."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from config import DEFAULTS, ConfigError, check_saved_config
from utils.checkpoint import CheckpointError, is_our_checkpoint, load_checkpoint, load_model_state
from utils.runtime import resolve_device

__all__ = ["CHECKPOINT_HINT", "LoadedModel", "TrainedCheckpoint", "read_trained_checkpoint", "model_from_checkpoint",
           "load_trained_model", "saved_config", "WEIGHTS_DTYPE_KEY"]

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


@dataclass
class TrainedCheckpoint:
    """A checkpoint file read but not yet made a model: what a caller needs to choose the model's size."""
    path: str
    contents: Dict[str, Any]          # load_checkpoint's dict (holds "state_dict")
    config: Optional[Dict[str, Any]]  # the config saved in our checkpoints; None for the authors' files
    description: str

    @property
    def image_size(self) -> Optional[Sequence[int]]:
        """The (H, W) the model was trained for, when the file says (ours); None for the authors' files."""
        return (self.config or {}).get("image_size")


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


def read_trained_checkpoint(path: Union[str, os.PathLike], *, trusted: bool = False) -> TrainedCheckpoint:
    """Read our checkpoint, the authors' ``{'state_dict': ...}`` file or a bare state dict
    (CheckpointError when missing or unreadable; ``trusted`` as in :func:`load_trained_model`)."""
    path = os.fspath(path)
    ckpt = load_checkpoint(path, trusted=trusted)
    ours = is_our_checkpoint(ckpt)
    saved = saved_config(ckpt, path)          # a bad saved value: CheckpointError naming the file and key
    epoch = ckpt.get("epoch")
    kind = "ours" if ours else "authors'/plain state dict"
    halved = ", float16 weights" if ours and ckpt.get(WEIGHTS_DTYPE_KEY) == "float16" else ""
    return TrainedCheckpoint(path=path, contents=ckpt, config=saved,
                             description=f"{path} ({kind}{'' if epoch is None else f', epoch {epoch}'}{halved})")


def model_from_checkpoint(trained: TrainedCheckpoint, image_size: Sequence[int],
                          device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """The VIPMT built for ``image_size`` (H, W) with the checkpoint's weights, in eval mode on ``device``
    (CheckpointError naming every missing / unexpected / wrongly shaped parameter)."""
    from models import VIPMT  # noqa: WPS433 - keeps `import vipmt.loading` light for --help

    device = device if isinstance(device, torch.device) else resolve_device(str(device))
    model = VIPMT(backbone_weights=None, image_size=tuple(image_size))   # the checkpoint holds the backbone
    trained_size = trained.image_size
    hint = CHECKPOINT_HINT
    if trained_size is not None and list(trained_size) != list(image_size):
        size = ",".join(str(side) for side in trained_size)
        hint = (f"The model was trained with image_size={size} (its config), and the score head's size depends on "
                f"the image size: test it at {size} (leave image_size out: the checkpoint's size is the default)")
    load_model_state(model, trained.contents["state_dict"], source=f"checkpoint {trained.path!r}", hint=hint)
    return LoadedModel(model=model.to(device).eval(), config=trained.config, description=trained.description)


def load_trained_model(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu",
                       image_size: Optional[Sequence[int]] = None, trusted: bool = False) -> LoadedModel:
    """Load our checkpoint, the authors' ``{'state_dict': ...}`` file or a bare state dict.

    The model is built for ``image_size`` (H, W); None takes the size saved in our checkpoint's
    config, else the default 240x424 (the authors' size). ``device``: 'auto', 'cpu', 'cuda',
    'cuda:N' or a torch.device. ``trusted=True`` allows files that
    hold arbitrary pickled objects. A missing or unreadable file, or weights that do not fit
    (every missing / unexpected / wrongly shaped parameter named), raise CheckpointError.
    """
    trained = read_trained_checkpoint(path, trusted=trusted)
    if image_size is None:
        image_size = trained.image_size or DEFAULTS.image_size
    return model_from_checkpoint(trained, image_size, device)
