"""Episode sampling rules shared by the datasets (docs/protocol.md, "Episodes").

Every random choice of an episode comes from :func:`item_rng`, a generator that is a pure
function of ``(seed, epoch, index)``; episodes are therefore identical across DataLoader
workers, processes and resumed runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from config import DEFAULTS, check_image_size

from .errors import DatasetError, check_integer

FrameT = TypeVar("FrameT")
VideoT = TypeVar("VideoT")

CLIP_LENGTH = DEFAULTS.clip_length


@dataclass(frozen=True)
class EpisodeSpec:
    """What one episode is, the same for every split of a run: built once from the config
    (:meth:`from_config`) and handed to the datasets.

    ``query_frames`` training query frames in clips of ``clip_length``, ``support_shots``
    annotated supports, letterboxed to ``image_size`` (H, W); ``letterbox_per_frame``: each frame
    with its own size (a deviation, :mod:`dataset.transforms`); ``fast_augment``: training
    augmentation as one warp per frame (a deviation); ``skip_empty_supports``: redraw a support
    frame whose class mask is empty (a deviation). The config's keys of the same names.
    """
    image_size: tuple = tuple(DEFAULTS.image_size)
    query_frames: int = DEFAULTS.query_frames
    clip_length: int = DEFAULTS.clip_length
    support_shots: int = DEFAULTS.support_shots
    letterbox_per_frame: bool = DEFAULTS.letterbox_per_frame
    fast_augment: bool = DEFAULTS.fast_augment
    skip_empty_supports: bool = DEFAULTS.skip_empty_supports

    def __post_init__(self):
        set_field = object.__setattr__                    # frozen: normalised once, here
        set_field(self, "image_size", check_image_size(self.image_size, error=DatasetError))
        for name in ("query_frames", "support_shots", "clip_length"):
            set_field(self, name, check_integer(name, getattr(self, name), minimum=1))
        if self.query_frames % self.clip_length != 0:
            raise DatasetError(f"query_frames ({self.query_frames}) must be a multiple of the clip "
                               f"length ({self.clip_length}): the query is made of whole clips")
        for name in ("letterbox_per_frame", "fast_augment", "skip_empty_supports"):
            set_field(self, name, bool(getattr(self, name)))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "EpisodeSpec":
        """The config's values of the spec's keys (every field is a config key; named one by one so
        that each key's reader can be found, tests/test_config_keys_act.py)."""
        return cls(image_size=cfg["image_size"], query_frames=cfg["query_frames"], clip_length=cfg["clip_length"],
                   support_shots=cfg["support_shots"], letterbox_per_frame=cfg["letterbox_per_frame"],
                   fast_augment=cfg["fast_augment"], skip_empty_supports=cfg["skip_empty_supports"])


class EpisodeKey(NamedTuple):
    """A training item drawn for another class than its index's.

    The authors' batch sampler replaces an index whose class is already in the batch by an
    episode of a random other class (:class:`dataset.sampler.DifferentClassBatchSampler`). The
    key keeps the replaced index (each index is drawn once per epoch) and names the class; its
    episode has its own generator (``item_rng`` of index and class), so it is a fresh episode.
    """
    index: int
    class_id: int


def item_rng(seed: int, epoch: int, index: int, class_id: int | None = None) -> np.random.Generator:
    """The generator of one episode: a pure function of ``(seed, epoch, index)`` (and of the class
    of an :class:`EpisodeKey`)."""
    extra = () if class_id is None else (class_id,)
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index), *(("class_id", v) for v in extra)):
        if int(value) < 0:
            raise DatasetError(f"{name} must be >= 0 to seed an episode, got {value}")
    return np.random.default_rng([int(seed), int(epoch), int(index), *(int(v) for v in extra)])


def select_query_clips(frames: Sequence[FrameT], num_clips: int, rng: np.random.Generator,
                       clip_length: int = CLIP_LENGTH) -> list[FrameT]:
    """Training query: ``num_clips`` clips of ``clip_length`` frames from ``frames`` (in order).

    The authors' rule: clip end points are sampled (without replacement, then sorted) among every
    ``clip_length``-th frame from position ``clip_length``; when there are fewer such positions
    than clips, position 0 stands in for none and the last position is repeated. Each clip is
    the ``clip_length`` frames ending at its end point, clamped to the start of the list; a
    list shorter than ``clip_length`` is padded by repeating its last frame.
    Returns ``num_clips * clip_length`` frames.
    """
    count = len(frames)
    if count == 0:
        raise DatasetError("cannot select query clips from a video without frames")
    end_positions = list(range(clip_length, count, clip_length))
    if len(end_positions) < num_clips:
        if not end_positions:
            end_positions.append(0)
        end_positions += [end_positions[-1]] * (num_clips - len(end_positions))
    chosen = sorted(end_positions[i] for i in rng.choice(len(end_positions), num_clips, replace=False))

    selected: list[FrameT] = []
    for end in chosen:
        if count < clip_length:
            selected += list(frames) + [frames[-1]] * (clip_length - count)
        elif end < clip_length:
            selected += list(frames[:clip_length])
        else:
            selected += list(frames[end - clip_length + 1:end + 1])
    return selected


def choose_videos(candidates: Sequence[VideoT], count: int, rng: np.random.Generator) -> list[VideoT]:
    """``count`` videos drawn from ``candidates``: distinct while enough exist.

    When ``candidates`` holds fewer than ``count`` videos, every candidate is used once (in
    random order) and the remaining slots are drawn from the candidates again, uniformly with
    replacement (each slot still draws its own frame, so repeats usually differ).
    """
    if not candidates:
        raise DatasetError("no candidate videos to draw supports from")
    if len(candidates) >= count:
        return [candidates[i] for i in rng.choice(len(candidates), count, replace=False)]
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    extra = [candidates[i] for i in rng.integers(0, len(candidates), count - len(candidates))]
    return order + extra
