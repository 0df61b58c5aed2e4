"""A stand-in for VIPMT in the tests of the training loop, and a fake source of episodes.

The loop (vipmt.training.Trainer), its hooks, checkpoints, resume, AMP's skipped steps and the
stops do not depend on what the network computes, only on its interface; the real network makes
each of their tests cost tens of seconds on a 2-core machine. :class:`StandIn` has that
interface with a few hundred parameters:

* ``forward(query_img, query_mask, support, support_mask, shots=)`` as ``VIPMT.forward`` in
  training: ``support`` is images ``[B,S,3,H,W]`` or the features of earlier frames (memory), the
  result holds ``loss`` and its terms ``main_loss``, ``aux_loss``, ``contrast_loss``,
  ``score_loss`` and the ``query_features`` / ``support_features`` the next clips reuse; so the
  real :func:`models.episode.train_episode` runs it, memory draws included;
* ``extract_features`` and ``predict_clip`` as the validation (:func:`models.episode.predict_episode`)
  calls them.

It has dropout (the global random stream matters for a bit-identical resume), its loss depends
on the memory frames' masks (the memory draws matter), and it can be told to return a NaN loss in
given optimizer steps or to take its time (for signals sent to a running train.py).

:func:`use_standin` makes ``vipmt.build.build_model`` (the one place a run gets its network)
return a stand-in, so a whole train.py run (in-process, or ``tests/standin_train.py`` in a
subprocess) trains it. :class:`FakeEpisodes` is a dataset of random episodes for a
:class:`vipmt.build.TrainingData` without files.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GRID = 4                   # features: each frame pooled to GRID x GRID colours


class StandIn(nn.Module):
    """A few parameters with VIPMT's training and validation interface (see the module docstring).

    ``nan_in_steps``: 1-based optimizer steps whose main loss is NaN (``clips_per_step`` forwards
    per step, counted from the model's creation); ``seconds_per_clip``: a pause in every forward.
    """

    def __init__(self, image_size: Sequence[int], *, nan_in_steps: Iterable[int] = (), clips_per_step: int = 3,
                 seconds_per_clip: float = 0.0):
        super().__init__()
        self.image_size = tuple(int(v) for v in image_size)
        self.head = nn.Conv2d(7, 2, 1)             # (query colour, prototype colour, prior) -> 2 classes
        with torch.no_grad():                      # start as "foreground where the colour is the prototype's"
            self.head.weight[:, 6] = torch.tensor([-2.0, 2.0])[:, None, None]
        self.aux_head = nn.Conv2d(3, 2, 1)
        self.contrast = nn.Linear(3, 8)
        self.score_head = nn.Linear(2, 1)
        self.dropout = nn.Dropout(0.3)
        self.nan_in_steps = set(nan_in_steps)
        self.clips_per_step = clips_per_step
        self.seconds_per_clip = seconds_per_clip
        self.forwards = 0

    def extract_features(self, images: torch.Tensor) -> dict:
        """images [B,T,3,H,W] -> {"pooled": [B,T,3,GRID,GRID]}."""
        b, t = images.shape[:2]
        return {"pooled": F.adaptive_avg_pool2d(images.flatten(0, 1), GRID).unflatten(0, (b, t))}

    def _clip(self, query_features: dict, support_features: dict, support_mask: torch.Tensor):
        """Class logits [B,T,2,H,W], auxiliary logits, contrast features [B,8] and score logits [B,T]."""
        query = query_features["pooled"]                                      # [B,T,3,g,g]
        b, t = query.shape[:2]
        masks = F.adaptive_avg_pool2d(support_mask.flatten(0, 1).float(), GRID).unflatten(0, support_mask.shape[:2])
        support = support_features["pooled"]
        prototype = (support * masks).sum((1, 3, 4)) / (masks.sum((1, 3, 4)) + 1e-3)    # [B,3]
        tiled = prototype[:, None, :, None, None].expand(-1, t, -1, GRID, GRID)
        prior = F.cosine_similarity(query, tiled, dim=2)[:, :, None]              # [B,T,1,g,g]
        logits = self.head(self.dropout(torch.cat((query, tiled, prior), dim=2).flatten(0, 1)))
        aux = self.aux_head(query.flatten(0, 1))
        size = self.image_size

        def upsample(x):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False).unflatten(0, (b, t))

        score = self.score_head(logits.mean((2, 3))).reshape(b, t)
        return upsample(logits), upsample(aux), self.contrast(prototype), score

    def forward(self, query_img: torch.Tensor, query_mask: torch.Tensor, support, support_mask: torch.Tensor,
                shots: Optional[int] = None) -> dict:
        """VIPMT.forward in training: query [B,T,3,H,W] + masks [B,T,1,H,W], support images [B,S,3,H,W]
        or features, support masks [B,S',1,H,W] -> losses and features."""
        if self.seconds_per_clip:
            time.sleep(self.seconds_per_clip)
        self.forwards += 1
        step = (self.forwards - 1) // self.clips_per_step + 1
        query_features = self.extract_features(query_img)
        support_features = support if isinstance(support, dict) else self.extract_features(support)
        logits, aux, contrast, score = self._clip(query_features, support_features, support_mask)
        target = query_mask[:, :, 0].long()
        present = (query_mask.flatten(2).amax(2) > 0).float()                  # [B,T]
        terms = {"main_loss": F.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1)),
                 "aux_loss": 0.5 * F.cross_entropy(aux.flatten(0, 1), target.flatten(0, 1)),
                 "contrast_loss": 0.01 * contrast.pow(2).mean(),
                 "score_loss": F.binary_cross_entropy_with_logits(score.float(), present)}
        if step in self.nan_in_steps:
            terms["main_loss"] = terms["main_loss"] * float("nan")
        loss = sum(terms.values())
        return {"loss": loss, **terms, "pred": logits.argmax(2), "query_features": query_features,
                "support_features": support_features}

    def predict_clip(self, query_features: dict, support: dict, support_mask: torch.Tensor,
                     query_mask: Optional[torch.Tensor] = None, shots: Optional[int] = None):
        """Validation: pred [B,T,H,W] int64 and score [B,T] of one clip."""
        logits, _aux, _contrast, score = self._clip(query_features, support, support_mask)
        return SimpleNamespace(pred=logits.argmax(2), score=torch.sigmoid(score))


def install(**options) -> None:
    """From now on (in this process) ``vipmt.build.build_model`` builds a :class:`StandIn`."""
    import vipmt.build

    vipmt.build.build_model = lambda cfg, backbone_weights: standin_for(cfg, **options)


def use_standin(monkeypatch, **options) -> None:
    """:func:`install` for one test (``monkeypatch``: pytest's fixture or a MonkeyPatch context)."""
    import vipmt.build

    monkeypatch.setattr(vipmt.build, "build_model", lambda cfg, backbone_weights: standin_for(cfg, **options))


def standin_for(cfg, **options) -> StandIn:
    """A stand-in for the network a run with ``cfg`` trains (its image size and clips per step)."""
    return StandIn(cfg.image_size, clips_per_step=cfg.query_frames // cfg.clip_length, **options)


class FakeEpisodes(torch.utils.data.Dataset):
    """Random episodes without files: ``classes x per_class`` items, each a pure function of
    (seed, epoch, index) as the real datasets' (a noisy frame with a bright rectangle as the object).

    Items as :class:`dataset.EpisodeDataset`'s: query_img [Tq,3,H,W], query_mask [Tq,1,H,W],
    support_img [S,3,H,W], support_mask [S,1,H,W], class_id, video.
    """

    def __init__(self, classes: Sequence[int] = (1, 2, 3), per_class: int = 2, *, query_frames: int = 3,
                 shots: int = 2, image_size: Sequence[int] = (16, 16), seed: int = 0):
        self.classes, self.per_class = list(classes), per_class
        self.query_frames, self.shots, self.image_size, self.seed = query_frames, shots, tuple(image_size), seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.classes) * self.per_class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def class_of_index(self, index) -> int:
        return self.classes[index // self.per_class] if isinstance(index, int) else index.class_id

    def _frames(self, count: int, generator: torch.Generator):
        h, w = self.image_size
        masks = torch.zeros(count, 1, h, w)
        for mask in masks:
            top, left = (int(v) for v in torch.randint(0, h // 2, (2,), generator=generator))
            mask[:, top:top + h // 2, left:left + w // 2] = 1
        return torch.randn(count, 3, h, w, generator=generator) + 2 * masks, masks

    def __getitem__(self, item) -> dict:
        epoch, index = item if isinstance(item, tuple) and len(item) == 2 and not hasattr(item, "class_id") \
            else (self.epoch, item)
        class_id = self.class_of_index(index)
        key = index if isinstance(index, int) else index.index
        generator = torch.Generator().manual_seed(((self.seed * 1000 + epoch) * 100000 + key) * 1000 + class_id)
        query_img, query_mask = self._frames(self.query_frames, generator)
        support_img, support_mask = self._frames(self.shots, generator)
        return {"query_img": query_img, "query_mask": query_mask, "support_img": support_img,
                "support_mask": support_mask, "class_id": class_id, "video": f"video{key}"}


def fake_training_data(cfg, classes: Sequence[int] = (1, 2, 3), per_class: int = 2):
    """A :class:`vipmt.build.TrainingData` of :class:`FakeEpisodes` (the config's query frames, image size,
    seed and batch size; the val split holds one class) with the real batch sampler and loaders."""
    from dataset import DifferentClassBatchSampler
    from vipmt.build import TrainingData

    def split(split_classes, count):
        return FakeEpisodes(split_classes, count, query_frames=cfg.query_frames, shots=cfg.support_shots,
                            image_size=cfg.image_size, seed=cfg.seed)

    train_set = split(classes, per_class)
    sampler = DifferentClassBatchSampler(train_set, batch_size=cfg.batch_size, seed=cfg.seed)
    return TrainingData(train_set, split([max(classes) + 1], 1), sampler, cfg)
