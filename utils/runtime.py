"""Small helpers shared by train.py and test.py: user errors, device choice, seeding.

Imports neither ``models`` nor ``dataset``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import sys
from typing import Callable, Sequence, Tuple, Type

import numpy as np
import torch

from .fileio import describe_os_error

__all__ = ["UserError", "EXIT_USER_ERROR", "EXIT_FAILURE", "EXIT_STOPPED", "EXIT_INTERRUPTED", "resolve_device",
           "seed_everything", "run_cli", "RANK_SEED_STRIDE", "reuse_freed_memory", "native_bf16_cpu", "bf16_advice",
           "log_bf16_advice"]

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2        # bad input the user can fix: "error: <message>", no traceback
EXIT_FAILURE = 1           # the run failed (e.g. non-finite loss)
EXIT_STOPPED = 75          # stopped by a signal after saving last.pth: run again to continue (sysexits.h EX_TEMPFAIL)
EXIT_INTERRUPTED = 130     # interrupted without saving anything (128 + SIGINT, as shells report Ctrl-C)
RANK_SEED_STRIDE = 100_003  # DDP rank r seeds with seed + r * stride (rank 0: the plain seed)


class UserError(Exception):
    """A problem the user can fix; scripts print ``error: <message>`` and exit 2."""


def resolve_device(name: str, local_rank: int = 0, advice: str = "use --device cpu") -> torch.device:
    """'auto' -> CUDA if available else CPU; 'cuda' -> the GPU of this DDP rank; 'cpu'.
    advice: what the error for CUDA on a machine without it tells the user to do (scripts: the option)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} was requested but CUDA is not available on this "
                            f"machine; {advice}")
        if name == "cuda":
            return torch.device("cuda", local_rank)
        index = int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(name)
    if name != "cpu":
        raise UserError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


# CPU flags (Linux /proc/cpuinfo) of instructions that compute bfloat16 products natively: x86's
# AMX-BF16 and AVX512-BF16, Arm's BF16 extension. torch.backends.cpu.get_cpu_capability() says
# "AVX512" for an AVX-512 CPU with them and one without alike, so it cannot tell.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
CPUINFO = "/proc/cpuinfo"
# What bfloat16 autocast gained over float32 where it was measured (docs/speed.md, "bfloat16 on the
# CPU"): the hint names it. Not every native flag gains: oneDNN limited to AVX512-BF16 on the Intel
# Xeon measured was slower than float32 (0.65x), so the hint quotes the machine measured.
BF16_SPEEDUPS = {
    "amx_bf16": "ran 2.8x faster than float32 (CPU time, one thread, 240x424, an Intel Xeon with AMX)",
    "avx512_bf16": "ran 1.9x faster than float32 on an AMD EPYC with AVX512-BF16, but 0.65x on an Intel Xeon "
                   "limited to AVX512-BF16 (measure on yours)",
}
BF16_PIXELS_DIFFERING = "0.2-1.3 %"   # of a random-weight model's mask pixels (docs/speed.md)


def native_bf16_cpu(cpuinfo: "str | None" = None) -> "str | None":
    """The first of NATIVE_BF16_FLAGS this CPU lists (e.g. 'amx_bf16'), or None: none, or no
    /proc/cpuinfo to read (not Linux), which says nothing either way. ``cpuinfo``: another file to read."""
    cpuinfo = cpuinfo or CPUINFO
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):        # x86, Arm
            flags.update(value.split())
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def bf16_advice(device: torch.device, bf16: bool, cpuinfo: "str | None" = None) -> "str | None":
    """A line for inference on the CPU about bfloat16 autocast, or None: float32 on a CPU with a native
    bf16 flag where bf16 was measured faster (a hint: slightly different masks, so never the
    default), bf16 on a CPU known to lack native bf16 (emulated: slower than float32, 0.24x measured
    with oneDNN limited to AVX-512 without BF16, far slower with AVX2)."""
    if device.type != "cpu":
        return None
    flag = native_bf16_cpu(cpuinfo)
    if flag in BF16_SPEEDUPS and not bf16:
        return (f"this CPU computes bfloat16 natively ({flag}): bfloat16 autocast (predict.py --bf16, "
                f"test_bf16=true, Predictor(bf16=True)) {BF16_SPEEDUPS[flag]} and changed "
                f"{BF16_PIXELS_DIFFERING} of the mask pixels; float32 stays the default (docs/speed.md)")
    if bf16 and flag is None and os.path.exists(cpuinfo or CPUINFO):
        return ("bfloat16 autocast on a CPU without native bfloat16 (no amx_bf16 / avx512_bf16 / bf16 flag in "
                f"{cpuinfo or CPUINFO}): it is emulated there, slower than float32 (4x slower measured without "
                f"AVX512-BF16; docs/speed.md)")
    return None


_ADVISED = set()


def log_bf16_advice(device: torch.device, bf16: bool) -> None:
    """Log :func:`bf16_advice` once per process (a hint at INFO, the emulated case as a warning)."""
    advice = bf16_advice(torch.device(device), bf16)
    if advice is None or advice in _ADVISED:
        return
    _ADVISED.add(advice)
    logger.log(logging.WARNING if bf16 else logging.INFO, advice)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# glibc mallopt parameters (malloc.h) and the largest value they take (a C int).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_C_INT_MAX = 2 ** 31 - 1


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc gives blocks over 32 MB back on free, and the next allocation of the same
    size is zero-filled again page by page. Video inference allocates such buffers for every
    clip (backbone activations, score-head input): about 1.15 M page faults (4.6 GB) per
    30-frame video at 240x424, ~5 % of the CPU engine's time. Process-wide, so only the
    inference scripts call it. Returns False, changing nothing, where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, _C_INT_MAX)) and bool(mallopt(_M_MMAP_THRESHOLD, _C_INT_MAX))


def run_cli(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None,
            user_errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run ``main(argv)`` (``sys.argv[1:]`` when None) and return its exit status: the one error
    boundary of every script (train, test, predict, reproduce, demo, ``python -m vipmt.export``,
    ``python -m dataset.check``, ``python -m synthetic`` ...).

    :class:`UserError`, the exceptions of ``user_errors`` (the caller's layer's own, e.g.
    DatasetError) and OSErrors of the storage or its permissions (a full disk, a quota, a
    read-only file system, EIO, EACCES: :data:`utils.fileio.STORAGE_ERRNOS`) become one line
    ``error: <message>`` and exit status 2; Ctrl-C that reaches here becomes ``interrupted`` and
    exit status 130. Neither prints a traceback; any other exception is a bug and keeps its own.
    """
    try:
        return int(main(sys.argv[1:] if argv is None else list(argv)) or 0)
    except (UserError, *user_errors) as exc:
        message = str(exc).strip() or type(exc).__name__
    except OSError as exc:
        message = describe_os_error(exc)
        if message is None:
            raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR
