"""Every default of training and testing, and strict command-line overrides.

The defaults are the paper's / the authors' implementation's settings (docs/protocol.md).
Edit ``DEFAULTS`` below to change them for every run, or override single values on the
command line of ``train.py`` / ``test.py``::

    python train.py --group 2 lr=1e-4 epochs=50 image_size=240,424

An override is ``key=value``; the key must be one of ``DEFAULTS`` and the value is parsed
with the type of the default (int, float, bool, str, or a list/tuple of those). Unknown
keys, wrong types and invalid combinations raise :class:`ConfigError` with a message naming
the key, the value and what was expected.

The resolved config (an ``EasyDict``) is saved in the run directory (``config.yaml``, with an
``environment`` record of the versions and git commit that ran, see
:func:`utils.provenance.environment_info`) and in every checkpoint (as a plain dict, see
:func:`config_to_dict`).
"""
from __future__ import annotations

import ast
import copy
import json
import math
import os
import tokenize
from typing import Any, Hashable, Iterable, Mapping

from easydict import EasyDict

from utils.fileio import atomic_write_text, unreadable_reason
from utils.plain import plain_data
from utils.provenance import environment_info

__all__ = [
    "ConfigError",
    "AUTO",
    "DEFAULTS",
    "DATASET_NAMES",
    "get_config",
    "check_image_size",
    "apply_overrides",
    "update_config",
    "validate_config",
    "config_to_dict",
    "dump_config",
    "save_config",
    "load_config_file",
    "read_config_file",
    "dataset_root",
    "DATASET_ROOT_KEYS",
    "key_help",
    "parse_override",
    "parse_assignment",
    "unknown_key_error",
    "resume_changes",
    "complete_saved_config",
    "check_saved_config",
    "check_values",
    "LEGACY_VALUES",
    "RUN_DEFINING_KEYS",
    "OPTIMIZER_KEYS",
]

DATASET_NAMES = ("youtube_vis", "minivspw")
DATASET_ROOT_KEYS = {"youtube_vis": "youtube_vis_root", "minivspw": "minivspw_root"}   # the key of each root
DEVICE_CHOICES = ("auto", "cpu", "cuda")
ENVIRONMENT_KEY = "environment"   # config files' record of what ran: not a setting, dropped on read
NUM_FOLDS = 4
FEATURE_STRIDE = 8          # the network's output stride (models.heads.OUTPUT_STRIDE is this): sides are multiples
MIN_IMAGE_SIDE = 64          # 8 feature cells: the score head and the attention stride features by 4
SEED_LIMIT = 2 ** 63          # seeds: 0 <= seed < 2**63 (numpy's SeedSequence: >= 0; torch: 64 bits)
MAX_SUPPORT_SHOTS = 5        # the model's support branch (models.vipmt.SHOTS): the authors' 5-shot slot


class ConfigError(ValueError):
    """A bad configuration value or override (the message names the key and the value)."""


# The comment after each key is its --help text (:func:`key_help`; a comment line below it, at the
# same column, continues it). Keys marked (R) define a run: ``train.py --resume`` refuses to change
# them (RUN_DEFINING_KEYS below says why for each); every other key may change on resume, is applied
# and logged in train.log and recorded in the checkpoint's history.
DEFAULTS = EasyDict(
    {
        # ---- data ------------------------------------------------------------------
        "dataset": "youtube_vis",                  # dataset to train / test on (R)
        "youtube_vis_root": "data/Youtube-VOS",    # YouTube-VIS 2019 root (holds train/train.json and
                                                   # train/JPEGImages)
        "minivspw_root": "data/VSPW_480p",         # VSPW 480p root (holds data/ and the MiniVSPW lists/)
        "image_size": [240, 424],                  # (H, W) letterbox size, multiples of 8 (R)
        # The authors letterbox a whole list (query clip/video, support set) with its first frame's
        # size and offset, stretching frames of another aspect ratio. True letterboxes each frame
        # with its own size: a deviation that changes inputs and results when sizes are mixed.
        "letterbox_per_frame": False,              # letterbox every frame with its own size and offset
                                                   # (a deviation; the authors: the first frame's) (R)
        # The authors augment a training frame at full resolution: crop (resized back), affine, float
        # contrast/noise, flip, letterbox. True composes them into one warp straight to the output
        # size (dataset.transforms.FastTrainTransform): a deviation that resamples once instead of
        # three times (docs/speed.md, "Training data loader").
        "fast_augment": False,                     # training augmentation as one warp per frame at the
                                                   # output size (a deviation; several times cheaper at
                                                   # 1280x720) (R)
        "group": 1,                                # fold 1..4 (its classes are held out for val/test) (R)
        "support_shots": 5,                        # annotated support images per episode, 1..5 (TTI
                                                   # reports 1-shot) (R)
        # The authors may pick a support frame whose segmentation is present but has no pixels (an
        # empty mask; `python -m dataset.check` counts them). True redraws such a frame (same video
        # first, then the class's other videos): a deviation that changes the training data.
        "skip_empty_supports": False,              # redraw a support frame whose class mask is empty
                                                   # (a deviation; the authors may pick it) (R)
        "query_frames": 15,                        # training query frames (whole clips) (R)
        "clip_length": 5,                          # frames per clip (train and test) (R)
        "episodes_per_class": 100,                 # training episodes per class per epoch (R)
        # The authors' batch sampler replaces a class already in the batch by a random other class,
        # so a class gets 100 +- 3 episodes per epoch. True uses each episode exactly once per epoch
        # (balanced classes): a deviation that changes the training batches.
        "balanced_class_sampler": False,           # every episode exactly once per epoch (a deviation;
                                                   # the authors replace a class already in the batch
                                                   # by a random other class) (R)
        "val_episodes_per_class": 50,              # validation episodes per class (R)
        "num_workers": "auto",                     # DataLoader worker processes per process: an integer, or
                                                   # auto (the CPUs this process may use divided among the
                                                   # local ranks; vipmt.build.resolve_num_workers)
        "check_data": False,                       # before training, decode every frame and mask the train
                                                   # and val splits use and list all bad files (python -m
                                                   # dataset.check)
        # ---- optimisation ------------------------------------------------------------
        "epochs": 100,                             # training epochs
        "batch_size": 4,                           # episodes per batch (per process under DDP) (R)
        "val_batch_size": 4,                       # validation episodes per batch
        # lr, betas, weight_decay: a resume sets them on the restored optimizer
        "lr": 5e-4,                                # Adam learning rate
        "betas": [0.9, 0.999],                     # Adam betas
        "weight_decay": 5e-4,                      # Adam weight decay
        "loss_weight_main": 1.0,                   # weight of the main loss (R)
        "loss_weight_aux": 1.0,                    # weight of the auxiliary loss (R)
        "loss_weight_contrast": 1.0,               # weight of the contrastive loss (R)
        "loss_weight_score": 1.0,                  # weight of the score (IoU regression) loss (R)
        "amp": True,                               # mixed precision with a gradient scaler (CUDA; on CPU
                                                   # only with amp_on_cpu)
        # Under AMP a step whose gradients are inf/nan is skipped by the gradient scaler, which lowers
        # its scale (the usual overflow while the scale settles). In float32 a non-finite loss stops
        # the run at once.
        "amp_max_consecutive_skips": 20,           # under AMP, stop after this many optimizer steps in a
                                                   # row skipped for inf/nan gradients
        # float16 autocast + GradScaler("cpu") are supported by torch >= 2.3, so that the
        # mixed-precision path runs without a GPU. Not a way to train.
        "amp_on_cpu": False,                       # testing aid: AMP (float16 autocast + gradient scaler)
                                                   # on CPU too; slow
        "grad_clip": 0.0,                          # max gradient norm; 0 disables (the reference: off)
        # ---- inference (test.py) -------------------------------------------------------
        "memory_threshold": 0.8,                   # a frame with predicted score >= this becomes memory
        "memory_size": 5,                          # at most this many memory frames per clip (R)
        "memory_pool_size": 0,                     # N > 0: test.py's engine draws memory from the N latest
                                                   # reliable frames only (bounds memory on long videos;
                                                   # 0 = all, the authors'; recorded in the results JSON)
        # A user's video can be of any length, so the API bounds memory by default: identical to the
        # authors' (0) on any video with at most this many reliable frames before its last clip.
        "predictor_memory_pool_size": 256,         # memory_pool_size of vipmt.Predictor and predict.py
                                                   # (~2.4-4.8 MB a frame at 240x424; 0 = the authors')
        "vc_window": 7,                            # window length of the VC_n metric
        "test_runs": 1,                            # repeat the test with seeds seed..seed+N-1
        "test_bf16": False,                        # bfloat16 autocast in test.py (CUDA, or CPUs with native
                                                   # bf16: 2.8x faster with AMX; slightly different masks,
                                                   # docs/speed.md)
        "test_video_batch": 1,                     # test.py segments this many videos side by side, their
                                                   # clips stacked in one forward pass (fills a GPU; the
                                                   # same masks as one at a time)
        "test_compile": False,                     # torch.compile (inductor) the backbone and the heads in
                                                   # test.py (opt-in); the first clips of each shape
                                                   # compile (minutes on CPU), the time is logged
        # ---- model -------------------------------------------------------------------
        "backbone_weights": "pretrain_model/resnet50_v2.pth",   # resnet50_v2.pth path, or 'none' for a
                                                                # random backbone (R)
        # ---- run ---------------------------------------------------------------------
        "seed": 42,                                # random seed (R)
        "device": "auto",                          # auto | cpu | cuda | cuda:N (auto: cuda if available)
        "output_dir": "runs",                      # where run directories are created
        "run_name": "",                            # run directory name (empty: <dataset>_group<G>)
        "save_every": 10,                          # periodic checkpoint epoch_NNN.pth every N epochs
        "periodic_checkpoint_full": False,         # epoch_NNN.pth holds the full training state
                                                   # (resumable) instead of the weights, config and epoch
                                                   # only (as the authors'; 528 MB instead of 1395 MB at
                                                   # 240x424)
        "checkpoint_every_iters": 200,             # also refresh last.pth every N iterations (0: off)
        "validate_every": 1,                       # validate every N epochs
        "log_every": 10,                           # TensorBoard scalars every N iterations
    }
)

# The keys (R) that define a run, and why a resume cannot change them.
_EPISODE = "the training episode's shape"
RUN_DEFINING_KEYS = {
    "dataset": "the classes trained on and held out",
    "group": "the classes trained on and held out",
    "image_size": "the network's input size (the score head's weights depend on it)",
    "letterbox_per_frame": "the inputs the network is trained on",
    "fast_augment": "the inputs the network is trained on",
    "support_shots": _EPISODE,
    "skip_empty_supports": "the training data (support frames)",
    "balanced_class_sampler": "the epoch's batches, which a resume continues inside",
    "query_frames": _EPISODE,
    "clip_length": _EPISODE,
    "memory_size": _EPISODE,
    "episodes_per_class": "the epoch's batches, which a resume continues inside",
    "batch_size": "the epoch's batches, which a resume continues inside",
    "val_episodes_per_class": "the validation episodes that choose best.pth",
    "seed": "every random stream of the run",
    "loss_weight_main": "the training objective",
    "loss_weight_aux": "the training objective",
    "loss_weight_contrast": "the training objective",
    "loss_weight_score": "the training objective",
    "backbone_weights": "the backbone, which a resume takes from the checkpoint",
}
# Run-defining keys added after runs were saved without them, with the value those runs used:
# a saved config that lacks one is completed with it (`complete_saved_config`), not with today's
# default, so that resuming such a run continues it unchanged.
LEGACY_VALUES = {"skip_empty_supports": True, "balanced_class_sampler": True}
# Keys a resume sets on the restored optimizer (its saved state holds the old values).
OPTIMIZER_KEYS = ("lr", "weight_decay", "betas")

AUTO = "auto"
INT_OR_AUTO_KEYS = ("num_workers",)   # an integer >= 0 or "auto"

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def check_image_size(image_size: Any, *, error: type[Exception] = ConfigError) -> tuple[int, int]:
    """The one image-size rule: ``(H, W)`` with both sides multiples of 8 and at least 64.

    Returns ``(H, W)`` as ints; raises ``error`` (the caller's error type, e.g. DatasetError or
    ModelError) with a message naming the value.
    """
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise error(f"image_size must be two integers (H, W), got {image_size!r}") from None
    for side_name, side in (("height", height), ("width", width)):
        if side % FEATURE_STRIDE != 0 or side < MIN_IMAGE_SIDE:
            raise error(f"image_size={height},{width}: the {side_name} {side} must be a multiple of "
                        f"{FEATURE_STRIDE} and at least {MIN_IMAGE_SIDE} (e.g. 240,424 or 64,112)")
    return height, width


RUN_DEFINING_MARK = "(R)"


def key_help() -> dict:
    """``{key: help text}`` from the comments of ``DEFAULTS`` in this file (the one source of the
    options' help): the comment after the key, continued by comment lines below it at the same
    column; the run-defining mark (R) left out."""
    with open(__file__, encoding="utf-8") as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    texts: dict = {}
    key, key_line, column, depth, inside = None, 0, None, 0, False
    for index, token in enumerate(tokens):
        if token.type == tokenize.NAME and token.string == "DEFAULTS" and tokens[index + 1].string == "=":
            inside = True
        if not inside:
            continue
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif token.type == tokenize.STRING and depth == 2 and tokens[index + 1].string == ":":
            key, key_line, column = ast.literal_eval(token.string), token.start[0], None
        elif token.type == tokenize.COMMENT and key is not None:
            text = token.string.lstrip("#").strip()
            if token.start[0] == key_line:
                texts[key], column = text, token.start[1]
            elif token.start[1] == column:
                texts[key] += " " + text
            else:
                column = None                  # a comment about the next keys
    return {k: v.replace(RUN_DEFINING_MARK, "").strip() for k, v in texts.items()}


def get_config() -> EasyDict:
    """A fresh deep copy of the defaults (mutating it never changes ``DEFAULTS``)."""
    return EasyDict(copy.deepcopy(config_to_dict(DEFAULTS)))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (list, tuple)):
        inner = _type_name(value[0]) if value else "any"
        return f"list of {len(value)} {inner}"
    return type(value).__name__


def _parse_scalar(key: str, text: str, default: Any) -> Any:
    text = text.strip()
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"config key {key!r}: expected a bool (true/false), got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected an int, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected a float, got {text!r}") from None
    if isinstance(default, str):
        return text
    raise ConfigError(f"config key {key!r}: cannot parse values of type {_type_name(default)}")


def parse_override(key: str, text: str, default: Any) -> Any:
    """Parse the string ``text`` for ``key`` with the type of ``default``.

    Lists accept ``a,b`` or ``[a, b]`` and must have the default's length; the keys of
    ``INT_OR_AUTO_KEYS`` take an integer or ``auto``.
    """
    if key in INT_OR_AUTO_KEYS:
        return _int_or_auto(key, text.strip())
    if isinstance(default, (list, tuple)):
        body = text.strip()
        if body.startswith(("[", "(")) and body.endswith(("]", ")")):
            body = body[1:-1]
        parts = [p for p in (s.strip() for s in body.split(",")) if p != ""]
        if default and len(parts) != len(default):
            raise ConfigError(
                f"config key {key!r}: expected {_type_name(default)} (e.g. "
                f"{key}={','.join(str(v) for v in default)}), got {text!r}"
            )
        element = default[0] if default else ""
        return [_parse_scalar(key, p, element) for p in parts]
    return _parse_scalar(key, text, default)


def _int_or_auto(key: str, value: Any) -> Any:
    """``auto`` or an integer (also given as text, e.g. from the command line)."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"config key {key!r}: expected an integer >= 0 or {AUTO!r}, got {value!r}")


def _check_value_type(key: str, value: Any, default: Any) -> Any:
    """Return ``value`` converted to the default's type, or raise ConfigError."""
    if key in INT_OR_AUTO_KEYS:
        return _int_or_auto(key, value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)) and (not default or len(value) == len(default)):
            element = default[0] if default else value[0] if value else ""
            return [_check_value_type(key, v, element) for v in value]
    raise ConfigError(
        f"config key {key!r}: expected {_type_name(default)}, got {value!r} ({_type_name(value)})"
    )


def unknown_key_error(key: str) -> ConfigError:
    valid = ", ".join(sorted(DEFAULTS))
    return ConfigError(f"unknown config key {key!r}; valid keys are: {valid}")


def update_config(cfg: EasyDict, values: Mapping[str, Any]) -> EasyDict:
    """Set python ``values`` on ``cfg`` (in place) with the same strict checks, then validate."""
    for key, value in values.items():
        if key not in DEFAULTS:
            raise unknown_key_error(key)
        cfg[key] = _check_value_type(key, value, DEFAULTS[key])
    validate_config(cfg)
    return cfg


def parse_assignment(item: str) -> tuple:
    """``(key, typed value)`` of one ``key=value`` override (ConfigError: not of that form, unknown key,
    wrong type)."""
    if "=" not in item:
        raise ConfigError(f"config override {item!r} is not of the form key=value")
    key, text = (part.strip() for part in item.split("=", 1))
    if key not in DEFAULTS:
        raise unknown_key_error(key)
    return key, parse_override(key, text, DEFAULTS[key])


def apply_overrides(cfg: EasyDict, overrides: Iterable[str]) -> EasyDict:
    """Apply ``key=value`` strings to ``cfg`` (in place), parse by the default's type, validate."""
    return update_config(cfg, dict(parse_assignment(item) for item in overrides))


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError if a value or a combination of values is invalid."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise unknown_key_error(unknown[0])
    missing = sorted(set(DEFAULTS) - set(cfg))
    if missing:
        raise ConfigError(f"config is missing keys: {', '.join(missing)}")
    check_values(cfg)


_POSITIVE_KEYS = ("support_shots", "query_frames", "clip_length", "episodes_per_class", "val_episodes_per_class",
                  "epochs", "batch_size", "val_batch_size", "memory_size", "vc_window", "test_runs",
                  "test_video_batch", "save_every", "validate_every", "log_every", "amp_max_consecutive_skips")


def check_values(cfg: Mapping[str, Any]) -> None:
    """The rules of :func:`validate_config` for the keys that ``cfg`` holds (typed values; a rule on
    two keys applies when both are there); ConfigError naming the key and the value."""
    def given(*keys: str) -> bool:
        return all(key in cfg for key in keys)

    if given("image_size"):
        check_image_size(cfg["image_size"])
    if given("dataset") and cfg["dataset"] not in DATASET_NAMES:
        raise ConfigError(f"dataset={cfg['dataset']!r}: expected one of {', '.join(DATASET_NAMES)}")
    if given("group") and not 1 <= cfg["group"] <= NUM_FOLDS:
        raise ConfigError(f"group={cfg['group']}: expected a fold number 1..{NUM_FOLDS}")
    if given("device"):
        device = cfg["device"]
        if not (device in DEVICE_CHOICES or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"device={device!r}: expected auto, cpu, cuda or cuda:N")
    for key in _POSITIVE_KEYS:
        if given(key) and cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]}: expected a positive integer")
    if given("seed") and not 0 <= cfg["seed"] < SEED_LIMIT:
        raise ConfigError(f"seed={cfg['seed']}: expected an integer 0 <= seed < 2**63 (numpy's seed sequences "
                          f"take no negative seed, torch's generators a 64-bit one)")
    if given("output_dir") and not cfg["output_dir"].strip():
        raise ConfigError("output_dir='': expected the folder that holds the run directories (default "
                          f"{DEFAULTS.output_dir!r}); an empty --output-dir is often a shell variable that is not set")
    if given("num_workers") and cfg["num_workers"] != AUTO and cfg["num_workers"] < 0:
        raise ConfigError(f"num_workers={cfg['num_workers']}: expected an integer >= 0 or {AUTO!r}")
    for key in ("checkpoint_every_iters", "memory_pool_size", "predictor_memory_pool_size"):
        if given(key) and cfg[key] < 0:
            raise ConfigError(f"{key}={cfg[key]}: expected >= 0")
    if given("support_shots") and cfg["support_shots"] > MAX_SUPPORT_SHOTS:
        raise ConfigError(
            f"support_shots={cfg['support_shots']}: expected 1 to {MAX_SUPPORT_SHOTS}. The model's support "
            f"branch holds at most {MAX_SUPPORT_SHOTS} annotated images (the authors' 5-shot setting); "
            f"further frames are memory frames, which training and testing add themselves")
    if given("query_frames", "clip_length") and cfg["query_frames"] % cfg["clip_length"] != 0:
        raise ConfigError(
            f"query_frames={cfg['query_frames']} must be a multiple of clip_length="
            f"{cfg['clip_length']} (training cuts the query into whole clips)"
        )
    for key, default in DEFAULTS.items():       # nan passes every comparison below: reject it first
        if not given(key):
            continue
        values = cfg[key] if isinstance(default, (list, tuple)) else [cfg[key]]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{key}={_show(cfg[key])}: expected a finite number (not nan or inf)")
    if given("lr") and cfg["lr"] <= 0:
        raise ConfigError(f"lr={_show(cfg['lr'])}: expected a learning rate > 0")
    for key in ("weight_decay", "grad_clip"):
        if given(key) and cfg[key] < 0:
            raise ConfigError(f"{key}={_show(cfg[key])}: expected >= 0")
    for beta in cfg.get("betas", ()):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"betas={_show(cfg['betas'])}: each must be in [0, 1)")
    if given("memory_threshold") and not 0.0 <= cfg["memory_threshold"] <= 1.0:
        raise ConfigError(f"memory_threshold={cfg['memory_threshold']}: expected a value in [0, 1]")
    for key in ("loss_weight_main", "loss_weight_aux", "loss_weight_contrast", "loss_weight_score"):
        if given(key) and cfg[key] < 0:
            raise ConfigError(f"{key}={cfg[key]}: expected >= 0")


def check_saved_config(saved: Any) -> dict:
    """The values of a config saved with a model (a checkpoint's ``config``), typed and checked key by
    key as a config file's are: ``{known key: value}`` (keys of other versions are left out; None
    -> ``{}``). ConfigError naming the first bad key; the caller names where the config came from.

    Unlike :func:`update_config` the values are not completed with today's defaults before the
    rules apply (a saved config may hold a few keys only), so only the rules on the keys it holds do.
    """
    if saved is None:
        return {}
    if not isinstance(saved, Mapping):
        raise ConfigError(f"the saved config is a {type(saved).__name__}, not a mapping of key: value")
    typed = {key: _check_value_type(key, value, DEFAULTS[key]) for key, value in saved.items() if key in DEFAULTS}
    check_values(typed)
    return typed


def resume_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict:
    """``{key: (saved value, new value)}`` of the keys a resume changes; ConfigError for run-defining ones.

    ``saved`` and ``new`` are complete configs (the checkpoint's, completed with the defaults,
    and the one the resumed run would use). Every refused key is named in one error.
    """
    changes = {key: (saved.get(key), new[key]) for key in DEFAULTS if saved.get(key) != new[key]}
    refused = [key for key in changes if key in RUN_DEFINING_KEYS]
    if refused:
        listed = "; ".join(f"{key} ({_show(changes[key][0])} -> {_show(changes[key][1])}: "
                           f"{RUN_DEFINING_KEYS[key]})" for key in refused)
        raise ConfigError(f"--resume cannot change {listed}. These keys define the run; resume without "
                          f"changing them, or start a new run (another --run-name) with the new values")
    return changes


def complete_saved_config(saved: Mapping[str, Any]) -> tuple[dict, dict]:
    """(``saved`` with the LEGACY_VALUES of the keys it lacks, those added keys) for a non-empty saved config."""
    added = {key: value for key, value in LEGACY_VALUES.items() if saved and key not in saved}
    return {**saved, **added}, added


def _show(value: Any) -> str:
    """A value as it is written on the command line (lists as a,b)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def config_to_dict(cfg: Mapping[str, Any]) -> dict:
    """A plain, JSON/YAML-serialisable dict copy (tuples become lists)."""
    return plain_data(cfg)


def dump_config(cfg: Mapping[str, Any], fmt: str = "yaml") -> str:
    """The config as YAML (if PyYAML is installed) or JSON text."""
    data = config_to_dict(cfg)
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML is a requirement
            fmt = "json"
        else:
            return yaml.safe_dump(data, sort_keys=True, default_flow_style=None)
    if fmt != "json":
        raise ConfigError(f"unknown config format {fmt!r}: expected yaml or json")
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def save_config(cfg: Mapping[str, Any], path: str, record_environment: bool = True) -> str:
    """Write the config atomically to ``path`` (.yaml/.yml -> YAML, otherwise JSON).

    With ``record_environment`` the file also holds ``environment:`` (python, torch, CUDA,
    numpy versions, git commit and dirty flag), which :func:`read_config_file` ignores."""
    fmt = "yaml" if path.endswith((".yaml", ".yml")) else "json"
    if not record_environment:
        return atomic_write_text(path, dump_config(cfg, fmt))
    environment = {ENVIRONMENT_KEY: environment_info()}
    if fmt == "json":
        return atomic_write_text(path, dump_config({**config_to_dict(cfg), **environment}, fmt))
    import yaml

    # YAML: the settings sorted as usual, then the record in block style, so it reads as an appendix
    text = (dump_config(cfg, fmt) + "# what ran: versions and code (a record, ignored when this file is read)\n"
            + yaml.safe_dump(environment, sort_keys=False, default_flow_style=False))
    return atomic_write_text(path, text)


class _DuplicateKey(ValueError):
    """A key given twice in one mapping of a config file (YAML and JSON parsers keep the last silently)."""


def _unique_json_object(pairs: list) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(f"key {key!r} twice ({json.dumps(seen[key])} and {json.dumps(value)})")
        seen[key] = value
    return seen


def _load_yaml_unique(text: str) -> Any:
    """``yaml.safe_load(text)``, except that a key given twice in a mapping is a _DuplicateKey naming its lines."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            lines: dict = {}
            for key_node, _value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, Hashable) and key in lines:
                    raise _DuplicateKey(f"key {key!r} twice (lines {lines[key]} and {line})")
                if isinstance(key, Hashable):
                    lines[key] = line
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_float(key: Any, value: Any) -> Any:
    """A float key's value as YAML 1.1 reads ``1e-4`` (a string: PyYAML needs a dot, ``1.0e-4``) -> the
    float it spells; every other value unchanged (and checked as given)."""
    default = DEFAULTS.get(key) if isinstance(key, str) else None

    def number(text: Any, element: Any) -> Any:
        if isinstance(element, float) and not isinstance(element, bool) and isinstance(text, str):
            try:
                return float(text)
            except ValueError:
                return text
        return text

    if isinstance(default, (list, tuple)) and isinstance(value, list) and default:
        return [number(v, default[0]) for v in value]
    return number(value, default)


def read_config_file(path: str) -> dict:
    """The raw ``key: value`` mapping of a YAML/JSON config file (keys and types checked).

    An empty file (or one of comments and blank lines only) is an empty mapping: the defaults.
    """
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a directory; expected a YAML (.yaml/.yml) or JSON file")
    problem = unreadable_reason(path)
    if problem:
        raise ConfigError(f"config file {path!r} {problem}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"config file {path!r} could not be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")          # a byte-order mark (Windows editors) is not a key
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); expected a YAML or JSON file of key: value lines, saved as UTF-8") from None
    is_yaml = path.endswith((".yaml", ".yml"))
    try:
        if is_yaml:
            data = _load_yaml_unique(text)
        else:
            data = json.loads(text, object_pairs_hook=_unique_json_object) if text.strip() else None
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {path!r} gives {exc}; give each key once") from None
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear message
        raise ConfigError(f"config file {path!r} could not be parsed: {exc}") from None
    if data is None:                # nothing in it (YAML's empty document is None): no values
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path!r} must hold a mapping of key: value "
                          f"(found a {type(data).__name__})")
    # JSON spells its floats unambiguously: its values are taken as given
    data = {k: _yaml_float(k, v) if is_yaml else v for k, v in data.items() if k != ENVIRONMENT_KEY}
    try:
        update_config(get_config(), data)
    except ConfigError as exc:
        raise ConfigError(f"config file {path!r}: {exc}") from None
    return dict(data)


def load_config_file(path: str) -> EasyDict:
    """Defaults updated (strictly) with the values of a saved YAML/JSON config file."""
    return update_config(get_config(), read_config_file(path))


def dataset_root(cfg: Mapping[str, Any]) -> str:
    """The data root of the configured dataset."""
    return cfg[DATASET_ROOT_KEYS[cfg["dataset"]]]
