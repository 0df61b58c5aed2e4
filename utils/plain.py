"""Plain data: what JSON, YAML and a weights-only ``torch.load`` can hold."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["plain_data"]


def plain_data(value: Any, *, finite_only: bool = False) -> Any:
    """``value`` with mappings (EasyDict, ...) as dicts with str keys, tuples as lists and numpy scalars as
    Python numbers; ``finite_only``: nan and inf become None (JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v, finite_only=finite_only) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, finite_only=finite_only) for v in value]
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        value = value.item()
    if finite_only and isinstance(value, float) and not math.isfinite(value):
        return None
    return value
