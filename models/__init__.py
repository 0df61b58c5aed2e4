"""VIPMT model package: `from models import VIPMT`."""
from .errors import ModelError
from .vipmt import DEFAULT_BACKBONE_WEIGHTS, VIPMT, ClipPrediction

__all__ = ["VIPMT", "ModelError", "ClipPrediction", "DEFAULT_BACKBONE_WEIGHTS"]
