"""The Python API's errors: one base class to catch.

    from vipmt import Predictor, VIPMTError

    try:
        results = list(predictor.segment(video, images, masks))
    except VIPMTError as error:       # a bad video, image, mask, argument or model file
        print(error)                  # names the input and what to give instead

Every error the API raises for something the caller can fix is a `VIPMTError` (a
`utils.runtime.UserError`, which the scripts print as one ``error:`` line, exit status 2). The
subclasses keep the lower layers' types too, so code that caught those still does.
"""
from __future__ import annotations

from utils.checkpoint import CheckpointError
from utils.runtime import UserError
from utils.video import VideoTruncatedError

__all__ = ["VIPMTError", "InputError", "ModelFileError", "TruncatedVideoError", "SessionBrokenError"]


class VIPMTError(UserError):
    """Base of the Python API's errors: bad input, a model file that cannot be used, a cut video."""


class InputError(VIPMTError, ValueError):
    """A video, frame, image, mask or argument the predictor cannot use; the message names it and
    what was expected."""


class ModelFileError(VIPMTError, CheckpointError):
    """A checkpoint `Predictor.from_checkpoint` cannot use (missing, corrupt, of another model)."""


class TruncatedVideoError(VIPMTError, VideoTruncatedError):
    """A video file that ends before the frame count it declares (see `open_video(allow_truncated=...)`)."""


class SessionBrokenError(VIPMTError, RuntimeError):
    """A session used after its model work was cut off mid-clip (Ctrl-C / a notebook's stop button, an
    out-of-memory error): its model state may be half updated, so it takes no more frames."""
