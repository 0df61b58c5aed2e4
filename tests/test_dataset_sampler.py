"""DifferentClassBatchSampler: distinct classes per batch, determinism, ranks, resume; the authors'
replacement of repeated classes (default) and the balanced opt-in (balanced_class_sampler)."""

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset import DatasetError, DifferentClassBatchSampler, EpisodeKey

BOTH = pytest.mark.parametrize("balanced", [False, True], ids=["authors", "balanced"])


class FakeEpisodes:
    """``per_class`` consecutive items per class, like the train/val splits."""

    def __init__(self, num_classes=30, per_class=10, class_sizes=None):
        sizes = class_sizes or [per_class] * num_classes
        self.labels = [c for c, size in enumerate(sizes) for _ in range(size)]

    def __len__(self):
        return len(self.labels)

    def class_of_index(self, index):
        return index.class_id if isinstance(index, EpisodeKey) else self.labels[index]

    def __getitem__(self, index):
        return {"index": int(index[0] if isinstance(index, EpisodeKey) else index),
                "class_id": self.class_of_index(index)}


def index_of(item):
    return item.index if isinstance(item, EpisodeKey) else item


def assert_distinct_classes(dataset, batches):
    for batch in batches:
        classes = [dataset.class_of_index(i) for i in batch]
        assert len(set(classes)) == len(classes), batch


def test_balanced_every_batch_has_distinct_classes_and_every_item_is_used_once():
    dataset = FakeEpisodes(num_classes=30, per_class=10)
    sampler = DifferentClassBatchSampler(dataset, batch_size=4, seed=42, balanced=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 300 // 4
    assert all(len(b) == 4 for b in batches)
    assert_distinct_classes(dataset, batches)
    used = list(itertools.chain.from_iterable(batches))
    assert sorted(used) == list(range(300))


@BOTH
def test_uneven_classes_never_repeat_a_class(balanced):
    dataset = FakeEpisodes(class_sizes=[40, 3, 3, 3, 2, 1])
    sampler = DifferentClassBatchSampler(dataset, batch_size=3, seed=0, balanced=balanced)
    batches = list(sampler)
    assert batches and all(len(b) == 3 for b in batches)
    assert_distinct_classes(dataset, batches)
    used = [index_of(i) for i in itertools.chain.from_iterable(batches)]
    assert len(used) == len(set(used))


def test_authors_sampler_replaces_repeated_classes_and_class_counts_vary():
    """The default: a permutation of every item in batches of 4; an item whose class is already in
    its batch becomes an EpisodeKey of another class. Per-epoch class counts are 100 +- about 3
    (30 classes x 100 episodes), not exactly 100 as with balanced=True."""
    dataset = FakeEpisodes(num_classes=30, per_class=100)
    sampler = DifferentClassBatchSampler(dataset, batch_size=4, seed=42)
    spreads, replaced = [], 0
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 750 and all(len(b) == 4 for b in batches)
        assert_distinct_classes(dataset, batches)
        items = list(itertools.chain.from_iterable(batches))
        assert sorted(index_of(i) for i in items) == list(range(3000))       # each index drawn once
        keys = [i for i in items if isinstance(i, EpisodeKey)]
        assert all(dataset.labels[k.index] != k.class_id for k in keys)
        replaced += len(keys)
        counts = np.bincount([dataset.class_of_index(i) for i in items], minlength=30)
        assert counts.sum() == 3000 and len(set(counts.tolist())) > 1
        spreads.append(counts.std())
    # a repeat happens with probability (0 + 1 + 2 + 3) / 30 per batch of 4 distinct-class draws: ~5 %
    assert 0.03 * 12000 < replaced < 0.07 * 12000
    assert 2.0 < np.mean(spreads) < 4.5
    balanced = DifferentClassBatchSampler(dataset, batch_size=4, seed=42, balanced=True)
    counts = np.bincount([dataset.class_of_index(i) for b in balanced for i in b], minlength=30)
    assert counts.tolist() == [100] * 30


@BOTH
def test_seed_and_epoch_determine_the_batches(balanced):
    dataset = FakeEpisodes()
    a = DifferentClassBatchSampler(dataset, batch_size=4, seed=1, balanced=balanced)
    b = DifferentClassBatchSampler(dataset, batch_size=4, seed=1, balanced=balanced)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(DifferentClassBatchSampler(dataset, batch_size=4, seed=2, balanced=balanced)) != first


@BOTH
def test_ranks_get_disjoint_batches_of_equal_count(balanced):
    dataset = FakeEpisodes(num_classes=30, per_class=10)
    for replicas in (2, 3):
        samplers = [DifferentClassBatchSampler(dataset, batch_size=4, seed=3, num_replicas=replicas, rank=r,
                                               balanced=balanced)
                    for r in range(replicas)]
        for s in samplers:
            s.set_epoch(5)
        per_rank = [list(s) for s in samplers]
        assert len({len(p) for p in per_rank}) == 1
        assert len(per_rank[0]) == (300 // 4) // replicas
        seen = [index_of(i) for p in per_rank for b in p for i in b]
        assert len(seen) == len(set(seen))
        for p in per_rank:
            assert_distinct_classes(dataset, p)


@BOTH
def test_resume_mid_epoch_continues_the_same_sequence(balanced):
    dataset = FakeEpisodes()
    sampler = DifferentClassBatchSampler(dataset, batch_size=4, seed=7, balanced=balanced)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start_batch=10)
    state = sampler.state_dict()
    resumed = DifferentClassBatchSampler(dataset, batch_size=4, seed=0, balanced=balanced)
    resumed.load_state_dict(state)
    assert list(resumed) == full[10:] and len(resumed) == len(full) - 10
    with pytest.raises(DatasetError, match="batch_size"):
        DifferentClassBatchSampler(dataset, batch_size=2, balanced=balanced).load_state_dict(state)
    with pytest.raises(DatasetError, match="balanced"):
        DifferentClassBatchSampler(dataset, batch_size=4, balanced=not balanced).load_state_dict(state)


def test_impossible_batches_are_refused():
    with pytest.raises(DatasetError, match="different classes is impossible"):
        DifferentClassBatchSampler(FakeEpisodes(num_classes=3), batch_size=4)
    with pytest.raises(DatasetError, match="rank"):
        DifferentClassBatchSampler(FakeEpisodes(), batch_size=4, num_replicas=2, rank=2)


@BOTH
def test_works_as_a_dataloader_batch_sampler(balanced):
    dataset = FakeEpisodes(num_classes=8, per_class=3)
    loader = DataLoader(dataset, batch_sampler=DifferentClassBatchSampler(dataset, batch_size=4, seed=0,
                                                                          balanced=balanced))
    batches = list(loader)
    assert len(batches) == 6
    for batch in batches:
        assert isinstance(batch["class_id"], torch.Tensor)
        assert len(set(batch["class_id"].tolist())) == 4
