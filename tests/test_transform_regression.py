"""The default TrainTransform against its own outputs saved before issue 17 made it cheaper
(tests/fixtures/regression/train_transform.npz): masks identical, normalised images within 1e-4."""
import os

import numpy as np
import pytest
import torch

from dataset.transforms import TrainTransform

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "regression", "train_transform.npz")
CASES = ("landscape", "portrait", "mixed", "mixed_per_frame", "single")
pytestmark = pytest.mark.golden


@pytest.fixture(scope="module")
def saved():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("case", CASES)
def test_default_train_transform_reproduces_the_saved_outputs(saved, case):
    count = sum(1 for k in saved if k.startswith(f"{case}/frame_"))
    frames = [saved[f"{case}/frame_{t}"] for t in range(count)]
    masks = [saved[f"{case}/mask_{t}"] for t in range(count)]
    transform = TrainTransform(tuple(saved["out_size"]), letterbox_per_frame=bool(saved[f"{case}/per_frame"]))
    for seed in saved["seeds"]:
        images, out_masks = transform(frames, masks, np.random.default_rng(int(seed)))
        assert images.dtype == torch.float32 and out_masks.dtype == torch.float32
        assert np.array_equal(out_masks.numpy(), saved[f"{case}/seed_{seed}/masks"]), (case, seed)
        difference = np.abs(images.numpy() - saved[f"{case}/seed_{seed}/images"]).max()
        assert difference <= 1e-4, (case, seed, difference)
