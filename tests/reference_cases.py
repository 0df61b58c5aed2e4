"""The project's own builder of the golden cases: deterministic weights, inputs and outputs.

The files in ``tests/fixtures/golden/`` are outputs of the authors' implementation, run with
weights and inputs that follow fixed rules (see docs/faithfulness.md). This module rebuilds
those weights and inputs bit for bit from the rules, so the golden tests need nothing outside
the repository. ``tests/test_reference_fixtures.py`` checks, where the authors' case builder
is available, that the tensors here equal theirs.

Case names: ``MODE_bB_qQ_sS[_seedN]`` (MODE ``eval`` or ``train``; N = 0 when absent) is one
forward pass of weights ``reference_state_dict(N)`` on ``reference_inputs(N + 1000, B, Q, S)``;
``episode_bB_qQ_sS[_seedN]`` is a three-clip training episode on the same weights and inputs;
``grads_<episode name>`` holds the gradients of that episode; other files (e.g.
``transform_test_mixed_sizes``) are read with :func:`load_npz`.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
GOLDEN_DIR = FIXTURES_DIR / "golden"
KEYS_FILE = FIXTURES_DIR / "state_dict_keys.tsv"
IMAGE_SIZE = (240, 424)          # the size every golden forward case was run at
INPUT_SEED_OFFSET = 1000         # a case's inputs use seed N + 1000, its weights seed N
BLOBS_PER_MASK = 2               # each input mask is the union of this many ellipses
FOREGROUND_SHIFT = 1.5           # added to the image noise inside the mask
ANTISYMMETRIC_HEADS = ("ini_cls.3", "cls.3")   # two-class convs made antisymmetric

_FORWARD_CASE = re.compile(r"(?P<mode>eval|train)_b(?P<b>\d+)_q(?P<q>\d+)_s(?P<s>\d+)(?:_seed(?P<seed>\d+))?")
_EPISODE_CASE = re.compile(r"episode_b(?P<b>\d+)_q(?P<q>\d+)_s(?P<s>\d+)(?:_seed(?P<seed>\d+))?")


# ---- weights ---------------------------------------------------------------------------
def reference_keys() -> "OrderedDict[str, tuple[int, ...]]":
    """{reference parameter/buffer name: shape}, in the order of the keys file (the draw order)."""
    keys: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip():
            continue
        name, shape_text, _dtype = line.split("\t")
        keys[name] = tuple(int(part) for part in shape_text.strip("()").split(",") if part.strip())
    return keys


def _draw(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One tensor by the rule its name and rank select (the order of the tests matters)."""
    if name.endswith("running_mean"):
        return torch.randn(shape, generator=generator) * 0.1
    if name.endswith("running_var"):
        return torch.rand(shape, generator=generator) * 0.1 + 1.0
    if name.startswith("upsample") and name.endswith(".weight"):
        # the box filter the 8x upsamplers start from; consumes no random numbers
        return torch.full(shape, 1.0 / (shape[-1] * shape[-1]))
    if len(shape) == 1 and name.endswith("weight"):
        return torch.randn(shape, generator=generator) * 0.1 + 1.0
    if len(shape) == 1 and name.endswith("bias"):
        return torch.randn(shape, generator=generator) * 0.05
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=generator) * math.sqrt(1.0 / fan_in)


def reference_state_dict(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A full state dict under the reference names, every tensor drawn from one generator
    seeded with ``seed``, in key order. The two-class classifier convs are then made
    antisymmetric around a zero mean (bias 0) so that predictions are not all one class."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict((name, _draw(name, shape, generator)) for name, shape in reference_keys().items())
    for head in ANTISYMMETRIC_HEADS:
        weight = state[f"{head}.weight"]          # [2, C, 1, 1]
        weight[0] -= weight[0].mean()
        weight[1] = -weight[0]
        state[f"{head}.bias"].zero_()
    return state


# ---- inputs ----------------------------------------------------------------------------
def _ellipse_union_masks(generator: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """[count, height, width] 0/1 float masks, each the union of random axis-aligned ellipses.

    Per ellipse the generator yields its centre (y, x) and then its radii (y, x), all as
    fractions of the image side; radii lie in [0.08, 0.33)."""
    rows = torch.arange(height).float()[:, None]
    cols = torch.arange(width).float()[None, :]
    masks = []
    for _ in range(count):
        inside = torch.zeros(height, width, dtype=torch.bool)
        for _ in range(BLOBS_PER_MASK):
            centre_y, centre_x = torch.rand(2, generator=generator).tolist()
            radius_y, radius_x = (0.08 + 0.25 * torch.rand(2, generator=generator)).tolist()
            dy = (rows - centre_y * height) / (radius_y * height)
            dx = (cols - centre_x * width) / (radius_x * width)
            inside |= dy ** 2 + dx ** 2 <= 1.0
        masks.append(inside.float())
    return torch.stack(masks) if masks else torch.zeros(0, height, width)


def reference_inputs(seed: int, batch: int, query_frames: int, support_frames: int,
                     size: tuple[int, int] = IMAGE_SIZE) -> dict:
    """Model inputs drawn from one generator seeded with ``seed``: first the query, then the
    support, each as masks then images.

    query_img [B,Tq,3,H,W], query_mask [B,Tq,1,H,W], support_img [B,Ts,3,H,W],
    support_mask [B,Ts,1,H,W]; masks are 0/1 floats, images N(0,1) noise plus 1.5 inside the
    mask (a separable foreground)."""
    height, width = size
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for role, frames in (("query", query_frames), ("support", support_frames)):
        masks = _ellipse_union_masks(generator, batch * frames, height, width)
        masks = masks.reshape(batch, frames, 1, height, width)
        noise = torch.randn(batch, frames, 3, height, width, generator=generator)
        inputs[f"{role}_img"] = noise + FOREGROUND_SHIFT * masks
        inputs[f"{role}_mask"] = masks
    return inputs


# ---- case names --------------------------------------------------------------------------
def _case_names(prefixes: tuple[str, ...]) -> "list[str]":
    return sorted(path.stem for path in GOLDEN_DIR.glob("*.npz") if path.stem.startswith(prefixes))


def golden_cases() -> "list[str]":
    """Single-forward cases (``eval_*``, ``train_*``) present in the golden folder."""
    return _case_names(("eval_", "train_"))


def episode_cases() -> "list[str]":
    """Three-clip training-episode cases (``episode_*``)."""
    return _case_names(("episode_",))


def grads_cases() -> "list[str]":
    """Training-gradient cases (``grads_episode_*``): the named episode's gradients under the
    authors' optimizer. Keys: 'names' (trained tensors, optimizer order), 'norm' and 'sum'
    (float64 per gradient), 'upsample1_grad'/'upsample2_grad' [2,1,9,9], the optimizer's
    'lr', 'beta1', 'beta2', 'eps', 'weight_decay', 'amsgrad', 'total_loss', 'memory_index'."""
    return _case_names(("grads_",))


def _parse(pattern: re.Pattern, case: str, what: str) -> re.Match:
    match = pattern.fullmatch(case)
    if match is None:
        raise ValueError(f"not {what} case name: {case!r}")
    return match


def golden_case(case: str) -> "tuple[str, int, dict]":
    """(mode, weights seed, inputs) of a single-forward case such as 'train_b2_q5_s10'."""
    match = _parse(_FORWARD_CASE, case, "a golden")
    seed = int(match["seed"] or 0)
    inputs = reference_inputs(seed + INPUT_SEED_OFFSET, int(match["b"]), int(match["q"]), int(match["s"]))
    return match["mode"], seed, inputs


def episode_case(case: str) -> "tuple[int, dict, list[int]]":
    """(weights seed, inputs, clip-3 memory frame indices) of an episode case such as
    'episode_b2_q15_s5' (see docs/protocol.md for the three clips)."""
    match = _parse(_EPISODE_CASE, case, "an episode")
    seed = int(match["seed"] or 0)
    inputs = reference_inputs(seed + INPUT_SEED_OFFSET, int(match["b"]), int(match["q"]), int(match["s"]))
    memory_index = [int(i) for i in load_npz(case)["memory_index"]]
    return seed, inputs, memory_index


# ---- golden files ------------------------------------------------------------------------
def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.npz"


def load_npz(name: str) -> "dict[str, np.ndarray]":
    """Every array of a golden file, as numpy arrays (no unpacking)."""
    with np.load(golden_path(name)) as data:
        return {key: data[key] for key in data.files}


def load_golden(case: str) -> dict:
    """A golden file as tensors. A packed prediction ('pred_bits' + 'pred_shape') becomes
    'pred' [B,T,H,W] int64; string arrays (a grads case's 'names') stay lists of str."""
    arrays = load_npz(case)
    out = {}
    if "pred_bits" in arrays:
        shape = tuple(int(side) for side in arrays.pop("pred_shape"))
        bits = np.unpackbits(arrays.pop("pred_bits"), count=math.prod(shape))
        out["pred"] = torch.from_numpy(bits.reshape(shape).astype(np.int64))
    for key, value in arrays.items():
        out[key] = value.tolist() if value.dtype.kind in "US" else torch.from_numpy(value)
    return out
