"""The one exception type of the data pipeline, and the check of its integer settings."""
from typing import Any

import numpy as np


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
