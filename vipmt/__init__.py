"""VIPMT as a library: `from vipmt import Predictor` segments any video from a few annotated images."""
from .predictor import Predictor

__all__ = ["Predictor"]
