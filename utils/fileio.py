"""Atomic file writes: a reader never sees a truncated or half-written file.

The data goes to a temporary file in the destination's directory, is flushed and
fsync'ed, then ``os.replace``d onto the destination (atomic on POSIX and Windows), and
the directory entry is fsync'ed. If anything fails (including a kill -9 between the
steps) the destination keeps its previous content and the temporary file is removed
(or, after a hard kill, left as a hidden ``.<name>.tmp*`` file that is never read).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> str:
    """Call ``write(binary_file)`` on a temp file next to ``path`` and atomically move it there."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
