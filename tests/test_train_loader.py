"""The training DataLoader (vipmt.build.build_train_loader): num_workers=auto, persistent workers that
follow the epochs, and the data-wait meter of the training loop (issue 17)."""
import os

import pytest
import torch

from config import AUTO, ConfigError, apply_overrides, get_config, update_config
from dataset import DifferentClassBatchSampler, EpisodeSpec, build_dataset
from synthetic import write_synthetic_youtube_vis
from vipmt.build import build_train_loader, resolve_num_workers

OUT = (64, 64)


def test_num_workers_is_auto_by_default_and_takes_integers():
    assert get_config().num_workers == AUTO
    assert apply_overrides(get_config(), ["num_workers=3"]).num_workers == 3
    assert apply_overrides(get_config(), ["num_workers=Auto"]).num_workers == AUTO
    assert update_config(get_config(), {"num_workers": 0}).num_workers == 0        # saved configs hold ints
    for bad in ("num_workers=-1", "num_workers=two", "num_workers=1.5"):
        with pytest.raises(ConfigError, match="num_workers"):
            apply_overrides(get_config(), [bad])


def test_auto_workers_are_the_cpus_of_this_process_shared_by_the_local_ranks():
    cpus = len(os.sched_getaffinity(0))
    assert resolve_num_workers(AUTO, 1) == cpus
    assert resolve_num_workers(AUTO, 2) == max(1, cpus // 2)
    assert resolve_num_workers(AUTO, 4 * cpus) == 1             # never 0: auto always uses workers
    assert resolve_num_workers(5, 2) == 5 and resolve_num_workers(0) == 0


def test_persistent_workers_follow_the_epochs(tmp_path):
    # two epochs through 2 persistent workers give the batches the main process computes itself
    root = write_synthetic_youtube_vis(str(tmp_path / "ytvis"), seed=4, videos_per_class=2, frames_per_video=5,
                                       frame_size=(48, 64), num_categories=8)
    dataset = build_dataset("youtube_vis", root=root, split="train", group=1,
                            spec=EpisodeSpec(image_size=OUT, query_frames=5, support_shots=1), episodes_per_class=1)
    sampler = DifferentClassBatchSampler(dataset, batch_size=2, seed=0)
    cfg = update_config(get_config(), {"num_workers": 2, "seed": 0})
    loader = build_train_loader(cfg, dataset, sampler, device=torch.device("cpu"))
    assert loader.num_workers == 2 and loader.persistent_workers and not loader.pin_memory
    seen = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        batches = list(loader)
        indices = list(sampler)
        assert len(batches) == len(indices) == 3
        for batch, batch_indices in zip(batches, indices):
            for row, index in enumerate(batch_indices):
                expected = dataset[index]                       # this epoch's episode, made here
                assert torch.equal(batch["query_img"][row], expected["query_img"])
                assert torch.equal(batch["support_mask"][row], expected["support_mask"])
        seen.append(batches[0]["query_img"])
    assert not torch.equal(seen[0], seen[1])                    # the epochs differ


def test_the_config_key_fast_augment_reaches_the_training_split(tmp_path):
    # the key must change what train.py builds, not only what build_dataset accepts
    from dataset.transforms import FastTrainTransform
    from vipmt.build import build_split

    root = write_synthetic_youtube_vis(str(tmp_path / "ytvis"), seed=4, videos_per_class=2, frames_per_video=5,
                                       frame_size=(48, 64), num_categories=8)
    for fast in (False, True):
        cfg = update_config(get_config(), {"fast_augment": fast, "youtube_vis_root": root, "image_size": list(OUT)})
        train = build_split(cfg, "train", episodes_per_class=1, seed=0, augment=True)
        val = build_split(cfg, "val", episodes_per_class=1, seed=0, augment=False)
        assert isinstance(train.transform, FastTrainTransform) == fast
        assert not isinstance(val.transform, FastTrainTransform)


def test_every_episode_setting_of_the_config_reaches_each_split_through_one_spec(tmp_path):
    # the settings used to be passed one by one through five signatures (fast_augment got lost once)
    import dataclasses

    from dataset.transforms import FastTrainTransform, TestTransform
    from vipmt.build import build_split

    root = write_synthetic_youtube_vis(str(tmp_path / "ytvis"), seed=4, videos_per_class=2, frames_per_video=6,
                                       frame_size=(48, 64), num_categories=8)
    changed = {"image_size": (64, 112), "query_frames": 6, "clip_length": 2, "support_shots": 2,
               "letterbox_per_frame": True, "fast_augment": True, "skip_empty_supports": True}
    assert set(changed) == {field.name for field in dataclasses.fields(EpisodeSpec)}
    values = {**changed, "image_size": list(changed["image_size"])}
    assert all(value != get_config()[key] for key, value in values.items())      # none is the default
    cfg = update_config(get_config(), {**values, "youtube_vis_root": root})
    splits = {split: build_split(cfg, split, episodes_per_class=1, seed=0, augment=split == "train")
              for split in ("train", "val", "test")}
    for split, dataset in splits.items():
        assert dataset.spec == EpisodeSpec(**changed), split
        assert isinstance(dataset.transform, FastTrainTransform if split == "train" else TestTransform)
        assert dataset.transform.letterbox_per_frame
    item = splits["train"][0]
    assert item["query_img"].shape == (6, 3, 64, 112) and item["support_mask"].shape == (2, 1, 64, 112)
