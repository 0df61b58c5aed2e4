"""The hidden temporaries that atomic writes use (``.<name>.tmp<pid>_<8 hex digits>``) and their removal.

Its own module so that :mod:`utils.fileio` (which writes them) and :mod:`utils.runlock` (whose
holder may delete the ones killed writes left) share it without importing each other.
"""
from __future__ import annotations

import os
import re
import secrets

__all__ = ["temp_path", "remove_temporaries"]

_TEMP_NAME = re.compile(r"^\..+\.tmp\d+_[0-9a-f]{8}$")     # .<name>.tmp<pid>_<8 hex digits>


def temp_path(directory: str, name: str) -> str:
    """A fresh hidden temporary name next to the destination ``name``."""
    return os.path.join(directory, f".{name}.tmp{os.getpid()}_{secrets.token_hex(4)}")


def remove_temporaries(directory: str) -> list:
    """Delete every temporary in ``directory`` (the caller makes sure no write is in progress);
    returns their names, sorted."""
    stale = sorted(name for name in os.listdir(directory) if _TEMP_NAME.match(name))
    for name in stale:
        os.unlink(os.path.join(directory, name))
    return stale
