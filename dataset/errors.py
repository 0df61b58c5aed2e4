"""The one exception type of the data pipeline, and the checks of its integer settings and files."""
import os
from typing import Any

import numpy as np

from utils.fileio import unreadable_reason


class DatasetError(ValueError):
    """Bad dataset input (missing files, corrupt annotations, impossible settings).

    The message names the file or value and says what was expected, so scripts can print
    ``error: <message>`` and exit without a traceback.
    """


def check_integer(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int; DatasetError naming ``name`` unless it is an integer (not a bool) >= ``minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise DatasetError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_regular_file(path: str, what: str) -> None:
    """DatasetError for a ``path`` that is there but is no regular file (a named pipe, which would block the
    image reader forever, a device, a directory, a dangling or looping link); a missing one is left to the
    reader's own FileNotFoundError."""
    if os.path.lexists(path):
        problem = unreadable_reason(path)
        if problem is not None:
            raise DatasetError(f"cannot read {what} {path}: it {problem}")


def not_a_folder(path: str) -> str:
    """' (it is a file, not a directory)' (or what else it is) for a dataset root that exists but is no folder."""
    if not os.path.lexists(path) or os.path.isdir(path):
        return ""
    return f" (it {unreadable_reason(path) or 'is a file, not a directory'})"
