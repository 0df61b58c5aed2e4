"""A batch sampler that never puts two episodes of one class in a batch (docs/protocol.md, "Episodes").

The contrast loss compares the episodes of a batch with each other, so they must have different
classes. Two ways to form an epoch's batches:

* the authors' (default): walk a random permutation of all items, ``batch_size`` at a time; an
  item whose class is already in its batch is replaced by an episode of a random class not in
  the batch (an :class:`dataset.episodes.EpisodeKey`: the same index, another class, a fresh
  episode). Every batch is full and the last partial batch is dropped; a class gets about
  ``episodes_per_class`` episodes, not exactly (100 +- 3 for 30 classes and batches of 4).
* ``balanced=True`` (config ``balanced_class_sampler``, a deviation): the items are shuffled
  within their classes, and batches are formed greedily: every batch takes one item from each
  of the ``batch_size`` classes with the most items left (ties broken at random), which uses
  every item exactly once whenever no class holds more than ``len(dataset) / batch_size`` of them
  (true for the train/val splits, whose classes all have ``episodes_per_class`` items). Leftover
  items that cannot fill a batch of distinct classes are dropped. The batches are then shuffled.

Either way the batches are dealt to the ranks: rank ``r`` of ``R`` gets batches ``r, r + R, ...``
(the same number on every rank; disjoint across ranks). Everything is a pure function of
``(seed, epoch)`` and the dataset's classes; ``start_batch`` lets a run resumed mid-epoch skip
the batches it has already consumed.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np
from torch.utils.data import Sampler

from config import DEFAULTS

from .episodes import EpisodeKey
from .errors import DatasetError


class ClassIndexed(Protocol):
    def __len__(self) -> int: ...

    def class_of_index(self, index: int | EpisodeKey) -> int: ...


class DifferentClassBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices whose classes are pairwise different.

    Args:
        dataset: anything with ``__len__`` and ``class_of_index(i)``.
        batch_size: episodes per batch (per rank).
        seed: base seed; epoch ``e`` uses the generator seeded by ``(seed, e)``.
        num_replicas, rank: distributed data parallel setting (defaults: one process).
        balanced: True = every item exactly once per epoch (a deviation); False = the authors'
            replacement of repeated classes (see the module docstring).
    """

    def __init__(self, dataset: ClassIndexed, batch_size: int, seed: int = DEFAULTS.seed,
                 num_replicas: int = 1, rank: int = 0, balanced: bool = DEFAULTS.balanced_class_sampler):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise DatasetError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not 0 <= rank < num_replicas:
            raise DatasetError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DatasetError(f"seed must be an integer >= 0, got {seed!r}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.balanced = bool(balanced)
        self._size = len(dataset)
        self.epoch = 0
        self.start_batch = 0
        self._indices_by_class: dict[int, list[int]] = {}
        for index in range(len(dataset)):
            self._indices_by_class.setdefault(int(dataset.class_of_index(index)), []).append(index)
        self._classes = sorted(self._indices_by_class)
        if len(self._classes) < self.batch_size:
            raise DatasetError(f"a batch of {self.batch_size} episodes of different classes is "
                               f"impossible: the dataset has {len(self._classes)} class(es); use "
                               f"batch_size <= {len(self._classes)}")
        self._cache: tuple[int, list[list[int]]] | None = None

    # --------------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (and skip its first ``start_batch`` batches of this rank)."""
        if int(epoch) < 0 or int(start_batch) < 0:
            raise DatasetError(f"epoch and start_batch must be >= 0, got {epoch} and {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _all_batches(self) -> list[list[int]]:
        """Every batch of the epoch, over all ranks, in dealing order."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._balanced_batches(rng) if self.balanced else self._authors_batches(rng)
        per_rank = len(batches) // self.num_replicas
        batches = batches[:per_rank * self.num_replicas]
        self._cache = (self.epoch, batches)
        return batches

    def _authors_batches(self, rng: np.random.Generator) -> list[list]:
        """A permutation of all items, cut into batches; a class already in the batch is replaced
        by a uniformly drawn class not in it (an EpisodeKey of the same index)."""
        class_of = {i: c for c, items in self._indices_by_class.items() for i in items}
        batches, batch, taken = [], [], []
        for index in rng.permutation(self._size).tolist():
            cls = class_of[index]
            if cls in taken:
                free = [c for c in self._classes if c not in taken]
                cls = free[int(rng.integers(len(free)))]
                batch.append(EpisodeKey(index, cls))
            else:
                batch.append(index)
            taken.append(cls)
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch, taken = [], []
        return batches

    def _balanced_batches(self, rng: np.random.Generator) -> list[list[int]]:
        queues = {c: [self._indices_by_class[c][i] for i in rng.permutation(len(self._indices_by_class[c]))]
                  for c in self._classes}
        batches = []
        while True:
            remaining = [c for c in self._classes if queues[c]]
            if len(remaining) < self.batch_size:
                break
            tie_break = rng.random(len(remaining))
            order = sorted(range(len(remaining)), key=lambda i: (-len(queues[remaining[i]]), tie_break[i]))
            chosen = [remaining[i] for i in order[:self.batch_size]]
            batch = [queues[c].pop() for c in chosen]
            batches.append([batch[i] for i in rng.permutation(len(batch))])
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches_per_epoch(self) -> int:
        """Batches of one full epoch on this rank."""
        return len(self._all_batches()) // self.num_replicas

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._all_batches()[self.rank::self.num_replicas]
        for batch in mine[self.start_batch:]:
            yield list(batch)

    # --------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the sequence of batches exactly."""
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch,
                "batch_size": self.batch_size, "num_replicas": self.num_replicas, "balanced": self.balanced}

    def load_state_dict(self, state: dict) -> None:
        for key in ("batch_size", "num_replicas", "balanced"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DatasetError(f"sampler state has {key}={state[key]} but this sampler uses "
                                   f"{getattr(self, key)}; resume with the same setting")
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), int(state.get("start_batch", 0)))
        self._cache = None


def classes_of_batch(dataset: ClassIndexed, batch: Sequence[int | EpisodeKey]) -> list[int]:
    """Classes of the items of a batch (a helper for checks and tests)."""
    return [int(dataset.class_of_index(i)) for i in batch]
