"""Self-describing, atomically written checkpoints and a loader for ours and the authors'.

Our checkpoint is a dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "vipmt-checkpoint", "version": 1, "contents": "full",
     "state_dict": {reference parameter name: tensor},   # same key as the authors' files
     "optimizer": ..., "scaler": ..., "epoch": completed epochs,
     "iteration": iterations done in the current epoch (0 = epoch finished),
     "global_step": ..., "sampler": {...}, "rng": [per-rank RNG states],
     "config": {resolved config}, "best_metric": float | None, "best_epoch": int | None,
     "metrics": {...},
     "environment": {"python", "torch", "torchvision", "cuda", "cudnn", "numpy", "git_commit",
                     "git_dirty"}}   # what wrote it, see utils.provenance

A weights-only checkpoint (:func:`save_weights`, ``"contents": "weights"``) keeps format,
version, state_dict, epoch, config, best_metric, best_epoch and metrics, and nothing else.

Both carry ``"integrity": {"algorithm": "sha256", "tensors": {path: hex digest}}``: the SHA-256
of every tensor's dtype, shape and bytes (``path`` like ``state_dict.score_head.fuse_conv1.weight``
or ``optimizer.state.3.exp_avg``), written at save time. :func:`load_checkpoint` (train.py's
resume, test.py, predict.py and the Predictor all load through it) verifies every digest and
names the first tensor that changed on disk; files without the record (the authors', ours from
before it) get the zip archive's CRC check instead. Every loaded model state is checked for
non-finite values too (:func:`check_finite_state`).

The authors' checkpoints are ``{"state_dict": {...}}`` (possibly with more keys, and
parameter names possibly prefixed with ``module.`` by DataParallel/DDP); a bare state
dict ``{name: tensor}`` is accepted as well. :func:`load_model_state` loads any of them into
a model and reports every missing, unexpected or wrongly shaped parameter by name in one
:class:`CheckpointError`.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import pickletools
import random
import zipfile
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .fileio import atomic_torch_save, unreadable_reason
from .plain import plain_data
from .provenance import environment_info

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "restore_rng_state",
    "unwrap_model",
    "strip_prefix",
    "save_checkpoint",
    "save_weights",
    "is_resumable",
    "load_checkpoint",
    "load_model_state",
    "is_our_checkpoint",
    "corruption_reason",
    "tensor_digests",
    "verify_integrity",
    "check_finite_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vipmt-checkpoint"
CHECKPOINT_VERSION = 1
CONTENTS_FULL = "full"            # model + optimizer, scaler, sampler, RNG: resumable
CONTENTS_WEIGHTS = "weights"      # model + config + epoch only (save_weights)
PARALLEL_PREFIX = "module."      # added by DataParallel / DistributedDataParallel
MAX_NAMES_IN_MESSAGE = 20        # longer key lists are cut, with a count of the rest
INTEGRITY_KEY = "integrity"
INTEGRITY_ALGORITHM = "sha256"
HASH_THREADS = 8                  # tensors hashed in parallel at save and load
ZIP_LOCAL_HEADER = b"PK\x03\x04"   # the first bytes of a zip archive (torch.save's format since 1.6)
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C   # the first pickle of the legacy torch.save format


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model (names the keys)."""


# ---- RNG state ---------------------------------------------------------------------------
def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python, numpy, torch (CPU and every CUDA device), as plain picklable data."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint holds %d CUDA RNG states but %d devices are visible; "
                           "CUDA RNG not restored", len(cuda_states), torch.cuda.device_count())


# ---- saving ------------------------------------------------------------------------------
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DataParallel / DistributedDataParallel wrapper (or the model)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def save_checkpoint(
    path: str,
    *,
    model: torch.nn.Module,
    epoch: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scaler: Optional[Any] = None,
    iteration: int = 0,
    global_step: int = 0,
    config: Optional[Mapping[str, Any]] = None,
    best_metric: Optional[float] = None,
    best_epoch: Optional[int] = None,
    sampler_state: Optional[Mapping[str, Any]] = None,
    rng_states: Optional[List[Mapping[str, Any]]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write a checkpoint atomically (a crash leaves the previous file intact) and return ``path``.

    ``epoch`` is the number of completed epochs; ``iteration`` > 0 marks a checkpoint taken
    inside epoch ``epoch`` after that many iterations. ``rng_states`` defaults to this
    process's :func:`capture_rng_state` (DDP: pass the list gathered from every rank). ``extra``:
    further top-level fields (e.g. a trainer's counters); one that this function writes itself is
    a ValueError, never a silent replacement.
    """
    ckpt = _layout(CONTENTS_FULL, model=model, epoch=epoch, config=config, best_metric=best_metric,
                   best_epoch=best_epoch, metrics=metrics)
    ckpt.update({
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "global_step": int(global_step),
        "sampler": dict(sampler_state) if sampler_state is not None else None,
        "rng": list(rng_states) if rng_states is not None else [capture_rng_state()],
        "environment": environment_info(),
    })
    _add_extra(ckpt, extra, "save_checkpoint")
    return _save_with_integrity(ckpt, path)


def save_weights(
    path: str,
    *,
    model: "torch.nn.Module | Mapping[str, torch.Tensor]",
    epoch: Optional[int],
    config: Optional[Mapping[str, Any]] = None,
    best_metric: Optional[float] = None,
    best_epoch: Optional[int] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write a weights-only checkpoint atomically (model, config, epoch; for testing, not resuming).

    Same format as :func:`save_checkpoint` (``"contents": "weights"``), without the optimizer,
    gradient scaler, sampler and RNG states, like the authors' epoch files. Adam keeps two
    tensors per trainable parameter, so for the 240x424 model (132.0 M values in the state dict,
    108.3 M trainable) this is 528 MB instead of 1395 MB. ``load_checkpoint`` and
    ``test.py --checkpoint`` read it; :func:`is_resumable` is False for it (no optimizer).
    ``model``: a module, or its state dict as it is to be written (e.g. float16 tensors,
    ``python -m vipmt.export --half``); ``epoch`` None: unknown (a file that did not say);
    ``extra``: further top-level fields, never one of the checkpoint's own (ValueError).
    """
    ckpt = _layout(CONTENTS_WEIGHTS, model=model, epoch=epoch, config=config, best_metric=best_metric,
                   best_epoch=best_epoch, metrics=metrics)
    _add_extra(ckpt, extra, "save_weights")
    return _save_with_integrity(ckpt, path)


def _add_extra(ckpt: Dict[str, Any], extra: Optional[Mapping[str, Any]], caller: str) -> None:
    clash = sorted(set(extra or {}) & (set(ckpt) | {INTEGRITY_KEY}))
    if clash:
        raise ValueError(f"{caller}: extra fields {clash} would replace the checkpoint's own; pass them "
                         f"as keywords")
    ckpt.update(extra or {})


def _layout(contents: str, *, model: "torch.nn.Module | Mapping[str, torch.Tensor]", epoch: Optional[int],
            config: Optional[Mapping[str, Any]], best_metric: Optional[float], best_epoch: Optional[int],
            metrics: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The fields every checkpoint of ours holds (see the module docstring); full ones add the rest."""
    state = (_cpu_state_dict(model) if isinstance(model, torch.nn.Module)
             else OrderedDict((k, v.detach().cpu()) for k, v in model.items()))
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "contents": contents,
        "state_dict": state,
        "epoch": None if epoch is None else int(epoch),
        "config": plain_data(config) if config is not None else None,
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "metrics": plain_data(metrics) if metrics is not None else {},
    }


# ---- integrity ---------------------------------------------------------------------------
def _tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (hex)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"")
    return digest.hexdigest()


def _tensors(obj: Any, prefix: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """(dotted path, tensor) of every tensor in nested mappings / lists / tuples, in their order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            if not prefix and key == INTEGRITY_KEY:
                continue
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{index}" if prefix else str(index))


def tensor_digests(obj: Any) -> "OrderedDict[str, str]":
    """{dotted path: SHA-256} of every tensor in ``obj`` (e.g. ``state_dict.head.weight``), in order.
    Hashed on threads (hashlib releases the GIL): ~1.4 GB for a full 240x424 checkpoint."""
    named = list(_tensors(obj))
    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_tensor_digest, (tensor for _, tensor in named)))
    return OrderedDict((name, digest) for (name, _), digest in zip(named, digests))


def _save_with_integrity(ckpt: Dict[str, Any], path: str) -> str:
    ckpt[INTEGRITY_KEY] = {"algorithm": INTEGRITY_ALGORITHM, "tensors": dict(tensor_digests(ckpt))}
    return atomic_torch_save(ckpt, path)


def verify_integrity(ckpt: Mapping[str, Any], path: str) -> bool:
    """Compare every tensor with the digest recorded at save time; CheckpointError naming the first
    that differs (or is missing, or new). Returns False when the checkpoint has no record."""
    record = ckpt.get(INTEGRITY_KEY) if isinstance(ckpt, Mapping) else None
    if not isinstance(record, Mapping):
        return False
    expected = record.get("tensors")
    if record.get("algorithm") != INTEGRITY_ALGORITHM or not isinstance(expected, Mapping):
        raise CheckpointError(f"checkpoint {path!r} has an integrity record this version cannot read "
                              f"(algorithm {record.get('algorithm')!r})")
    actual = tensor_digests(ckpt)
    for name, digest in actual.items():
        if expected.get(name) != digest:
            what = "is not in the record made at save time" if name not in expected else \
                "differs from the SHA-256 recorded when the file was saved"
            raise CheckpointError(
                f"checkpoint {path!r} is corrupt: tensor {name!r} {what} (the file changed on disk after "
                f"it was written: bit rot, a bad copy or an edit). Copy it again, or use another checkpoint.")
    missing = [name for name in expected if name not in actual]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: tensor {missing[0]!r} recorded at save time is "
                              f"missing ({len(missing)} missing). Copy it again, or use another checkpoint.")
    return True


def check_finite_state(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming the first floating-point tensor with a NaN or infinite value."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CheckpointError(f"{source}: parameter {name!r} holds {bad} non-finite value(s) (NaN or "
                                      f"inf) of {tensor.numel()}; a model with them predicts garbage. Use "
                                      f"another checkpoint (e.g. an earlier epoch_NNN.pth or best.pth).")


def _cpu_state_dict(model: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().cpu()) for k, v in unwrap_model(model).state_dict().items())


def is_resumable(ckpt: Mapping[str, Any]) -> bool:
    """True for our full checkpoints (optimizer state present); False for weights-only and others."""
    return is_our_checkpoint(ckpt) and ckpt.get("optimizer") is not None


# ---- loading -----------------------------------------------------------------------------
def is_our_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    return isinstance(ckpt, Mapping) and ckpt.get("format") == CHECKPOINT_FORMAT


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_checkpoint(path: str, map_location: Any = "cpu", trusted: bool = False, mmap: bool = False) -> Dict[str, Any]:
    """Read a checkpoint file and return a dict that has at least ``"state_dict"``.

    Accepts our checkpoints, the authors' ``{"state_dict": ...}`` files and bare state dicts.
    Files are read with ``weights_only=True`` (no arbitrary code on load) unless
    ``trusted=True``. The integrity record is verified (else the zip CRCs) and the state dict
    must be finite. ``mmap=True`` is for reading the epoch or config only: the tensors are mapped,
    not read, hence neither hashed nor checked (a load whose weights are used must not pass it).
    Raises :class:`CheckpointError` with the path and the reason.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith((".pth", ".pt")))[:5]
        raise CheckpointError(f"checkpoint {path!r} is a directory; expected a checkpoint file"
                              + (f" (it holds {', '.join(inside)})" if inside else ""))
    problem = unreadable_reason(path)       # a named pipe would make torch.load wait forever
    if problem:
        raise CheckpointError(f"checkpoint {path!r} {problem}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=not trusted, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one CheckpointError
        raise _unreadable(path, exc, trusted) from None
    if not mmap and not verify_integrity(obj, path):
        damage = corruption_reason(path)          # no record: at least the archive's CRCs
        if damage is not None:
            raise CheckpointError(f"checkpoint {path!r} is corrupt: {damage}. Copy or download it again.")
    if isinstance(obj, Mapping) and "state_dict" in obj:
        if not _is_state_dict(obj["state_dict"]):
            raise CheckpointError(f"checkpoint {path!r}: 'state_dict' is not a mapping of "
                                  f"parameter names to tensors")
        out = dict(obj)
    elif isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        out = dict(obj)
        out["state_dict"] = out.pop("model")
    elif _is_state_dict(obj):
        out = {"state_dict": obj}
    else:
        out = None
    if out is not None:
        if not mmap:
            check_finite_state(out["state_dict"], f"checkpoint {path!r}")
        return out
    keys = list(obj.keys())[:MAX_NAMES_IN_MESSAGE] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"checkpoint {path!r} has no 'state_dict' (found: {keys}); expected "
                          f"our checkpoint or the authors' {{'state_dict': ...}} file")


def _unreadable(path: str, exc: Exception, trusted: bool) -> CheckpointError:
    """The error for a file torch.load refused: damage first, then the safe-mode refusal."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    kind = _text_kind(path)
    if kind is not None:            # not a damaged checkpoint: another kind of file
        return CheckpointError(f"checkpoint {path!r} is {kind}, not a PyTorch checkpoint; expected a .pth file "
                               f"written by train.py, python -m vipmt.export or torch.save")
    try:
        damage = corruption_reason(path)
    except OSError as err:
        return CheckpointError(f"checkpoint {path!r} could not be read: {err.strerror}")
    if damage is None and (isinstance(exc, EOFError) or "unexpected EOF" in detail):
        damage = f"the data ends early ({detail.rstrip('.')})"     # legacy format: storages cut short
    if damage is not None:
        return CheckpointError(
            f"checkpoint {path!r} is corrupt or truncated: {damage}. Copy or download it again "
            f"(checkpoints are written atomically, so an interrupted copy or download is the usual cause).")
    if isinstance(exc, pickle.UnpicklingError) and not trusted:
        return CheckpointError(
            f"checkpoint {path!r} holds objects other than tensors and plain containers, so it "
            f"was not loaded (safe mode). If you trust the file, pass --trust-checkpoint. "
            f"Detail: {detail}")
    return CheckpointError(f"checkpoint {path!r} could not be read: {detail}")


TEXT_SNIFF_BYTES = 4096


def _text_kind(path: str) -> Optional[str]:
    """'a JSON file (...)' or 'a text file' when ``path`` starts as UTF-8 text (a checkpoint is a zip
    archive or a pickle, both binary), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(TEXT_SNIFF_BYTES)
    except OSError:
        return None
    if not head or b"\0" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:           # not just a character cut at the end of the sample
            return None
        text = head[:exc.start].decode("utf-8")
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return "a JSON file (e.g. test.py's results or an annotation file)"
    if all(c.isprintable() or c.isspace() for c in text):
        return "a text file"
    return None


def corruption_reason(path: str) -> Optional[str]:
    """Why ``path`` is not an intact PyTorch file (empty, cut short, damaged), or None if it is.

    Checks structure only and never unpickles (no code from the file runs): the zip format's
    end record and member CRCs and a complete ``data.pkl`` pickle stream; for the legacy
    (pre-1.6) format, PyTorch's magic number and complete header and object pickles.
    """
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad_member = archive.testzip()
                if bad_member is not None:
                    return f"archive member {bad_member!r} fails its CRC check"
                pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pickles:
                    return "the zip archive holds no data.pkl (it is not a PyTorch file)"
                data = archive.read(pickles[0])
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
            return f"the zip archive is damaged ({err})"
        return _pickle_damage(io.BytesIO(data), "its data.pkl")
    with open(path, "rb") as f:
        head = f.read(len(ZIP_LOCAL_HEADER))
        if head == ZIP_LOCAL_HEADER:
            return f"the zip archive has no end record: the file ({size} bytes) was cut short"
        f.seek(0)
        try:
            ops = list(pickletools.genops(f))
        except Exception:  # noqa: BLE001 - genops raises ValueError and others on garbage
            return f"it is neither a zip archive nor a pickle stream ({size} bytes of other data)"
        numbers = [arg for op, arg, _pos in ops if op.name not in ("PROTO", "STOP")]
        if numbers != [LEGACY_MAGIC_NUMBER]:
            return "it does not start with PyTorch's magic number (not a PyTorch file)"
        for part in ("the protocol record", "the system record", "the object record"):
            damage = _pickle_damage(f, part)
            if damage is not None:
                return damage
    return None


def _pickle_damage(stream: "io.BufferedIOBase", what: str) -> Optional[str]:
    """None if ``stream`` holds one complete pickle (read up to its STOP), else what is wrong."""
    try:
        for _op in pickletools.genops(stream):
            pass
    except Exception as err:  # noqa: BLE001 - ValueError (cut short, unknown opcode) and others
        return f"{what} is incomplete or damaged ({err})"
    return None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = PARALLEL_PREFIX) -> "OrderedDict[str, torch.Tensor]":
    """Remove ``prefix`` from the keys if every key has it (DataParallel/DDP checkpoints)."""
    keys = list(state_dict)
    if keys and all(k.startswith(prefix) for k in keys):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())
    return OrderedDict(state_dict)


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_NAMES_IN_MESSAGE])
    more = len(keys) - MAX_NAMES_IN_MESSAGE
    return shown + (f", ... ({more} more)" if more > 0 else "")


def load_model_state(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    hint: str = "",
) -> None:
    """Load ``state_dict`` into ``model`` strictly; one CheckpointError names every bad key.

    ``module.`` prefixes are removed first; anything missing, unexpected, or with a different
    shape is an error. ``hint`` is appended to the message.
    """
    target = unwrap_model(model)
    sd = strip_prefix(state_dict)
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
                   for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong shape {len(wrong_shape)}: {_names(wrong_shape)}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts) + "."
                              + (f" {hint}" if hint else ""))
    target.load_state_dict(sd)          # strict: every key was checked above
