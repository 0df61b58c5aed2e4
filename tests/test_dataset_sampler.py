"""DifferentClassBatchSampler: distinct classes per batch, determinism, ranks, resume."""

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from dataset import DatasetError, DifferentClassBatchSampler


class FakeEpisodes:
    """``per_class`` consecutive items per class, like the train/val splits."""

    def __init__(self, num_classes=30, per_class=10, class_sizes=None):
        sizes = class_sizes or [per_class] * num_classes
        self.labels = [c for c, size in enumerate(sizes) for _ in range(size)]

    def __len__(self):
        return len(self.labels)

    def class_of_index(self, index):
        return self.labels[index]

    def __getitem__(self, index):
        return {"index": index, "class_id": self.labels[index]}


def assert_distinct_classes(dataset, batches):
    for batch in batches:
        classes = [dataset.class_of_index(i) for i in batch]
        assert len(set(classes)) == len(classes), batch


def test_every_batch_has_distinct_classes_and_every_item_is_used_once():
    dataset = FakeEpisodes(num_classes=30, per_class=10)
    sampler = DifferentClassBatchSampler(dataset, batch_size=4, seed=42)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 300 // 4
    assert all(len(b) == 4 for b in batches)
    assert_distinct_classes(dataset, batches)
    used = list(itertools.chain.from_iterable(batches))
    assert sorted(used) == list(range(300))


def test_uneven_classes_never_repeat_a_class():
    dataset = FakeEpisodes(class_sizes=[40, 3, 3, 3, 2, 1])
    sampler = DifferentClassBatchSampler(dataset, batch_size=3, seed=0)
    batches = list(sampler)
    assert batches and all(len(b) == 3 for b in batches)
    assert_distinct_classes(dataset, batches)
    used = list(itertools.chain.from_iterable(batches))
    assert len(used) == len(set(used))


def test_seed_and_epoch_determine_the_batches():
    dataset = FakeEpisodes()
    a = DifferentClassBatchSampler(dataset, batch_size=4, seed=1)
    b = DifferentClassBatchSampler(dataset, batch_size=4, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(DifferentClassBatchSampler(dataset, batch_size=4, seed=2)) != first


def test_ranks_get_disjoint_batches_of_equal_count():
    dataset = FakeEpisodes(num_classes=30, per_class=10)
    for replicas in (2, 3):
        samplers = [DifferentClassBatchSampler(dataset, batch_size=4, seed=3, num_replicas=replicas, rank=r)
                    for r in range(replicas)]
        for s in samplers:
            s.set_epoch(5)
        per_rank = [list(s) for s in samplers]
        assert len({len(p) for p in per_rank}) == 1
        assert len(per_rank[0]) == (300 // 4) // replicas
        seen = [i for p in per_rank for b in p for i in b]
        assert len(seen) == len(set(seen))
        for p in per_rank:
            assert_distinct_classes(dataset, p)


def test_resume_mid_epoch_continues_the_same_sequence():
    dataset = FakeEpisodes()
    sampler = DifferentClassBatchSampler(dataset, batch_size=4, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start_batch=10)
    state = sampler.state_dict()
    resumed = DifferentClassBatchSampler(dataset, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == full[10:] and len(resumed) == len(full) - 10
    with pytest.raises(DatasetError, match="batch_size"):
        DifferentClassBatchSampler(dataset, batch_size=2).load_state_dict(state)


def test_impossible_batches_are_refused():
    with pytest.raises(DatasetError, match="different classes is impossible"):
        DifferentClassBatchSampler(FakeEpisodes(num_classes=3), batch_size=4)
    with pytest.raises(DatasetError, match="rank"):
        DifferentClassBatchSampler(FakeEpisodes(), batch_size=4, num_replicas=2, rank=2)


def test_works_as_a_dataloader_batch_sampler():
    dataset = FakeEpisodes(num_classes=8, per_class=3)
    loader = DataLoader(dataset, batch_sampler=DifferentClassBatchSampler(dataset, batch_size=4, seed=0))
    batches = list(loader)
    assert len(batches) == 6
    for batch in batches:
        assert isinstance(batch["class_id"], torch.Tensor)
        assert len(set(batch["class_id"].tolist())) == 4
