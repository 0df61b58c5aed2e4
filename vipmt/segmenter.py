"""The video engine test.py runs, built from the config: clip length, reliable memory, precision, compile.

:func:`make_segmenter` turns a resolved config into a ``models.VideoSegmenter`` (every inference
key of config/config.py reaches it here) and :func:`engine_settings` reads back what the engine
was given, for the results JSON. ``test_compile`` compiles the model's heaviest modules in place
(:func:`compile_model`) after :func:`check_compiler` made sure inductor works here.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import torch

from utils.runtime import UserError, log_bf16_advice

__all__ = ["COMPILED_MODULES", "check_compiler", "compile_model", "compile_seconds", "make_segmenter",
           "engine_settings"]

logger = logging.getLogger(__name__)

# The modules test_compile compiles: the backbone and the two heaviest heads. The small
# nn.Sequential heads are left out: they share one forward code object, so dynamo would recompile
# it for each of them and soon hit its recompile limit. The named steps around them
# (prototypes, similarity, memory) stay eager: their shapes change with the memory size and
# the object's area.
COMPILED_MODULES = ("backbone", "transformer", "score_head")


def check_compiler() -> None:
    """UserError unless torch.compile (inductor) can build a kernel here (it compiles lazily, on the
    first video, so without this check a missing C++ compiler would only surface mid-test)."""
    try:
        torch.compile(lambda x: x.relu() + 1, backend="inductor")(torch.ones(2))
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"test_compile=true, but torch.compile (inductor) does not work here: "
                        f"{type(exc).__name__}: {first_line}. Set test_compile=false") from None


def compile_model(model) -> None:
    """Compile the forward of each of :data:`COMPILED_MODULES` in place with inductor.

    Only ``forward`` is replaced (not ``__call__``), so parameter names, state dicts and
    forward hooks stay as they are and hooks run eagerly.
    """
    for name in COMPILED_MODULES:
        module = getattr(model, name)
        module.forward = torch.compile(module.forward, backend="inductor")


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process (dynamo's own record; 0 if none)."""
    from torch._dynamo import utils as dynamo_utils  # noqa: WPS433 - private, hence the fallback

    return float(sum(getattr(dynamo_utils, "compilation_time_metrics", {}).get("_compile.compile_inner", [])))


def make_segmenter(model, cfg):
    """The video engine with the configured clip length, reliable memory (threshold, size, pool) and precision.

    ``test_compile`` compiles the model's backbone and heads in place (:func:`compile_model`).
    """
    from models import VideoSegmenter  # noqa: WPS433

    if cfg.test_compile:
        check_compiler()
        compile_model(model)
        logger.info("torch.compile (inductor): backbone and heads compile on their first clips of each shape")
    log_bf16_advice(next(model.parameters()).device, cfg.test_bf16)    # a CPU with native bf16: a hint
    return VideoSegmenter(model, clip_length=cfg.clip_length, memory_threshold=cfg.memory_threshold,
                          memory_size=cfg.memory_size, memory_pool_size=cfg.memory_pool_size,
                          autocast_dtype=torch.bfloat16 if cfg.test_bf16 else None)


def engine_settings(segmenter) -> Dict[str, Any]:
    """What the engine was built with, read from the engine itself (the results JSON's ``engine``)."""
    dtype = segmenter.autocast_dtype
    return {"clip_length": segmenter.clip_length, "memory_threshold": segmenter.memory_threshold,
            "memory_size": segmenter.memory_size, "memory_pool_size": segmenter.memory_pool_size,
            "use_memory": segmenter.use_memory, "autocast_dtype": None if dtype is None else str(dtype)}
