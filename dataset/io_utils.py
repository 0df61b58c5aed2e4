"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def atomic_write_bytes(path: str, payload: bytes, sync: bool = True) -> None:
    """Write ``payload`` to a temporary file in ``path``'s folder, fsync it, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            if sync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_json(path: str, data: Any, indent: int | None = None, sync: bool = True) -> None:
    """Serialise ``data`` as JSON and write it atomically to ``path``."""
    text = json.dumps(data, indent=indent, separators=(",", ":") if indent is None else None)
    atomic_write_bytes(path, text.encode("utf-8"), sync=sync)


def atomic_write_text(path: str, text: str, sync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), sync=sync)
