"""VIPMT model package: `from models import VIPMT`."""
from .errors import ModelError
from .engine import VideoPrediction, VideoSegmenter, segment_video_recompute
from .vipmt import DEFAULT_BACKBONE_WEIGHTS, VIPMT, ClipPrediction, SupportEncoding

__all__ = ["VideoSegmenter", "VideoPrediction", "segment_video_recompute", "VIPMT", "ModelError", "ClipPrediction", "SupportEncoding", "DEFAULT_BACKBONE_WEIGHTS"]
