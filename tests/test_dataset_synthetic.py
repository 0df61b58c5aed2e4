"""Synthetic writers: real formats, determinism, object statistics, a learnable signal."""

import json
import os
import time

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from dataset import DatasetError, EpisodeSpec, YouTubeVISDataset
from synthetic import write_synthetic_youtube_vis
from synthetic.cli import main as synthetic_main
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD

SMALL = dict(videos_per_class=2, frames_per_video=3, frame_size=(64, 112))


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "ytvis")
    start = time.perf_counter()
    write_synthetic_youtube_vis(root, seed=0)
    return root, time.perf_counter() - start


def load_json(root):
    with open(os.path.join(root, "train", "train.json")) as handle:
        return json.load(handle)


@pytest.mark.slow
def test_default_dataset_is_quick_to_write_and_complete(default_root):
    root, seconds = default_root
    assert seconds < 30
    data = load_json(root)
    assert [c["id"] for c in data["categories"]] == list(range(1, 41))
    assert len(data["videos"]) == 40 * 8
    for video in data["videos"][:20]:
        assert video["height"] == 120 and video["width"] == 216 and video["length"] == 7
        for name in video["file_names"]:
            assert os.path.isfile(os.path.join(root, "train", "JPEGImages", name))
    per_class = {}
    for ann in data["annotations"]:
        per_class.setdefault(ann["category_id"], set()).add(ann["video_id"])
    assert min(len(v) for v in per_class.values()) >= 8


def test_objects_are_large_and_instances_vary(default_root):
    data = load_json(default_root[0])
    videos = {v["id"]: v for v in data["videos"]}
    largest, count, absent = {}, {}, 0
    for ann in data["annotations"]:
        video = videos[ann["video_id"]]
        height, width = video["height"], video["width"]
        for t, seg in enumerate(ann["segmentations"]):
            if seg is None:
                absent += 1
                continue
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            fraction = float(mask_utils.area(rle)) / (height * width)
            key = (ann["video_id"], t)
            largest[key] = max(largest.get(key, 0.0), fraction)
            count[key] = count.get(key, 0) + 1
    assert absent > 0                                              # null segmentations exist
    assert sum(n > 1 for n in count.values()) > 0.2 * len(count)  # several instances per frame
    fractions = np.array(list(largest.values()))
    # the largest object of a frame covers 10-40 % of it in most frames
    assert np.mean((fractions >= 0.08) & (fractions <= 0.4)) > 0.8


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_synthetic_youtube_vis(str(tmp_path / "a"), seed=1, **SMALL)
    b = write_synthetic_youtube_vis(str(tmp_path / "b"), seed=1, **SMALL)
    c = write_synthetic_youtube_vis(str(tmp_path / "c"), seed=2, **SMALL)
    read = lambda root: open(os.path.join(root, "train", "train.json"), "rb").read()
    assert read(a) == read(b) and read(a) != read(c)


def test_rewriting_and_foreign_folders(tmp_path):
    root = str(tmp_path / "ds")
    write_synthetic_youtube_vis(root, seed=1, **SMALL)
    stamp = os.path.getmtime(os.path.join(root, "train", "train.json"))
    write_synthetic_youtube_vis(root, seed=1, **SMALL)              # same parameters: no-op
    assert os.path.getmtime(os.path.join(root, "train", "train.json")) == stamp
    with pytest.raises(DatasetError, match="other parameters"):
        write_synthetic_youtube_vis(root, seed=2, **SMALL)
    write_synthetic_youtube_vis(root, seed=2, overwrite=True, **SMALL)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        write_synthetic_youtube_vis(str(foreign), seed=0, overwrite=True, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]   # no staging folder left


@pytest.mark.slow
def test_command_line(tmp_path, capsys):
    root = str(tmp_path / "cli")
    assert synthetic_main(["youtube_vis", "--root", root, "--seed", "3", "--videos-per-class", "6",
                           "--frames", "5", "--height", "64", "--width", "112"]) == 0
    assert YouTubeVISDataset(root, split="test", group=1, spec=EpisodeSpec(image_size=(64, 112))).classes
    assert synthetic_main(["youtube_vis", "--root", root, "--seed", "4"]) == 2
    assert "error:" in capsys.readouterr().err


def _colour_knn_iou(item, samples=48, frames=3, rng=None):
    """A training-free few-shot baseline: label a query pixel object when its nearest support
    colour (among sampled object and background pixels) is an object colour."""
    def rgb(images):
        return (images.permute(0, 2, 3, 1).numpy() * IMAGENET_STD + IMAGENET_MEAN) * 255

    support, support_mask = rgb(item["support_img"]), item["support_mask"][:, 0].numpy() > 0.5
    fg, bg = support[support_mask], support[~support_mask]
    fg = fg[rng.choice(len(fg), min(samples, len(fg)), replace=False)]
    bg = bg[rng.choice(len(bg), min(samples, len(bg)), replace=False)]
    query, truth = rgb(item["query_img"][:frames]), item["query_mask"][:frames, 0].numpy() > 0.5
    pixels = query.reshape(-1, 3)
    d_fg = ((pixels[:, None] - fg[None]) ** 2).sum(-1).min(1)
    d_bg = ((pixels[:, None] - bg[None]) ** 2).sum(-1).min(1)
    prediction = (d_fg < d_bg).reshape(truth.shape)
    union = np.logical_or(prediction, truth).sum()
    return np.logical_and(prediction, truth).sum() / union if union else 1.0


@pytest.mark.slow
def test_held_out_classes_carry_a_few_shot_signal(default_root):
    """Support object colours identify the held-out class in the query (all background: IoU 0)."""
    dataset = YouTubeVISDataset(default_root[0], split="test", group=1, spec=EpisodeSpec(image_size=(64, 112)))
    rng = np.random.default_rng(0)
    picks = range(0, len(dataset), max(1, len(dataset) // 12))
    ious = [_colour_knn_iou(dataset[i], rng=rng) for i in picks]
    assert np.mean(ious) > 0.5, ious
    assert all(torch.is_tensor(dataset[0][k]) for k in ("query_img", "support_mask"))
