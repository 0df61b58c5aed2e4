"""VIPMT model package: `from models import VIPMT`."""
from .errors import ModelError
from .engine import ClipResult, QueryVideo, VideoPrediction, VideoSegmenter, VideoSession
from .vipmt import DEFAULT_BACKBONE_WEIGHTS, VIPMT, ClipPrediction, SupportEncoding

__all__ = ["VideoSegmenter", "VideoSession", "QueryVideo", "VideoPrediction", "ClipResult", "VIPMT", "ModelError", "ClipPrediction", "SupportEncoding", "DEFAULT_BACKBONE_WEIGHTS"]
