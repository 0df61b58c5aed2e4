"""YouTube-VIS 2019 loader: folds, indexing, mask decoding, episodes, determinism, bad input."""

import json
import logging
import os
import shutil

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from torch.utils.data import DataLoader

from dataset import DatasetError, EpisodeSpec, YouTubeVISDataset, build_dataset, fold_classes
from synthetic import write_synthetic_youtube_vis
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD, letterbox_geometry
from dataset.youtube_vis import index_annotations

FRAME_SIZE = (64, 112)
IMAGE_SIZE = (64, 112)


@pytest.fixture(scope="module")
def ytvis_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ytvis") / "Youtube-VOS")
    return write_synthetic_youtube_vis(root, seed=3, videos_per_class=6, frames_per_video=6,
                                       frame_size=FRAME_SIZE, portrait_videos=2)


@pytest.fixture(scope="module")
def annotations(ytvis_root):
    with open(os.path.join(ytvis_root, "train", "train.json")) as handle:
        return json.load(handle)


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return dst


SPEC_FIELDS = ("image_size", "query_frames", "clip_length", "support_shots", "letterbox_per_frame", "fast_augment",
               "skip_empty_supports")


def make(root, split="train", **kwargs):
    kwargs.setdefault("image_size", IMAGE_SIZE)
    kwargs.setdefault("episodes_per_class", 2)
    spec = {k: kwargs.pop(k) for k in SPEC_FIELDS if k in kwargs}
    return YouTubeVISDataset(root, split=split, spec=EpisodeSpec(**spec), **kwargs)


def reference_decode(segmentation, height, width):
    """Independent decode with pycocotools, as its documentation describes."""
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    if isinstance(segmentation["counts"], list):
        return mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.decode(segmentation)


# ------------------------------------------------------------------------------------ folds
def test_fold_classes_follow_the_id_rule():
    assert fold_classes(1, "test") == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37]
    assert fold_classes(4, "val") == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    for group in range(1, 5):
        held_out, train = fold_classes(group, "test"), fold_classes(group, "train")
        assert len(held_out) == 10 and len(train) == 30
        assert sorted(held_out + train) == list(range(1, 41))
    all_held_out = sum((fold_classes(g, "test") for g in range(1, 5)), [])
    assert sorted(all_held_out) == list(range(1, 41))


@pytest.mark.slow
def test_split_classes(ytvis_root, annotations):
    assert make(ytvis_root, "train", group=2).classes == [c for c in range(1, 41) if c % 4 != 2]
    assert make(ytvis_root, "val", group=2).classes == [2, 6, 10, 14, 18, 22, 26, 30, 34, 38]
    test = make(ytvis_root, "test", group=3)
    assert test.classes == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]
    assert test.class_name(3) == next(c["name"] for c in annotations["categories"] if c["id"] == 3)


# ------------------------------------------------------------------------------------ index
def test_synthetic_json_exercises_every_encoding(annotations):
    kinds = set()
    for ann in annotations["annotations"]:
        for seg in ann["segmentations"]:
            if seg is None:
                kinds.add("null")
            elif isinstance(seg, list):
                kinds.add("polygon")
            elif isinstance(seg["counts"], list):
                kinds.add("uncompressed")
            else:
                kinds.add("compressed")
    assert kinds == {"null", "polygon", "uncompressed", "compressed"}


def test_index_lists_the_frames_with_a_non_null_instance(ytvis_root, annotations):
    index = index_annotations(os.path.join(ytvis_root, "train", "train.json"))
    videos = {v["id"]: v for v in annotations["videos"]}
    expected = {}
    for ann in annotations["annotations"]:
        name = videos[ann["video_id"]]["file_names"][0].split("/")[0]
        frames = {i for i, seg in enumerate(ann["segmentations"]) if seg is not None}
        expected.setdefault((name, ann["category_id"]), set()).update(frames)
    got = {(name, c): set(frames) for name, rec in index.videos.items() for c, frames in rec.class_frames.items()}
    expected = {k: v for k, v in expected.items() if v}
    assert got == expected


def test_class_mask_is_the_union_of_a_direct_decode(ytvis_root, annotations):
    dataset = make(ytvis_root, "train", group=1)
    videos = {v["id"]: v for v in annotations["videos"]}
    checked = multi_instance = 0
    for ann_group in _by_video_and_class(annotations):
        video, class_id, anns = ann_group
        height, width = video["height"], video["width"]
        name = video["file_names"][0].split("/")[0]
        for frame in range(video["length"]):
            segs = [a["segmentations"][frame] for a in anns if a["segmentations"][frame] is not None]
            if not segs:
                continue
            expected = np.zeros((height, width), np.uint8)
            for seg in segs:
                expected |= reference_decode(seg, height, width)
            got = dataset.load_mask(name, frame, class_id)
            assert got.dtype == np.uint8 and got.shape == (height, width)
            np.testing.assert_array_equal(got, expected)
            checked += 1
            multi_instance += len(segs) > 1
        if checked > 400:
            break
    assert checked > 100 and multi_instance > 0
    del videos


def _by_video_and_class(annotations):
    videos = {v["id"]: v for v in annotations["videos"]}
    groups = {}
    for ann in annotations["annotations"]:
        groups.setdefault((ann["video_id"], ann["category_id"]), []).append(ann)
    for (video_id, class_id), anns in sorted(groups.items()):
        yield videos[video_id], class_id, anns


# ------------------------------------------------------------------------------------ episodes
def test_train_and_val_episode_shapes(ytvis_root):
    for split in ("train", "val"):
        dataset = build_dataset("youtube_vis", root=ytvis_root, split=split, group=1,
                                spec=EpisodeSpec(image_size=(80, 128)), episodes_per_class=3)
        assert len(dataset) == len(dataset.classes) * 3
        item = dataset[len(dataset) - 1]
        assert item["query_img"].shape == (15, 3, 80, 128) and item["query_img"].dtype == torch.float32
        assert item["query_mask"].shape == (15, 1, 80, 128) and item["query_mask"].dtype == torch.float32
        assert item["support_img"].shape == (5, 3, 80, 128)
        assert item["support_mask"].shape == (5, 1, 80, 128)
        assert set(item["query_mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["class_id"] == dataset.class_of_index(len(dataset) - 1) == dataset.classes[-1]
        assert item["video"] in dataset.videos_of_class(item["class_id"])
        assert all(v in dataset.videos_of_class(item["class_id"]) for v in item["support_videos"])
        assert (item["support_mask"].flatten(1).sum(1) > 0).all()


def test_test_split_enumerates_every_video_once_with_whole_sequences(ytvis_root):
    dataset = make(ytvis_root, "test", group=1)
    pairs = [dataset.test_item(i) for i in range(len(dataset))]
    expected = [(c, v) for c in dataset.classes for v in dataset.videos_of_class(c)]
    assert pairs == expected and len(set(pairs)) == len(pairs)
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        item = dataset[index]
        class_id, video = pairs[index]
        frames = dataset.query_frames_of(video, class_id)
        assert item["query_img"].shape[0] == item["query_mask"].shape[0] == len(frames)
        assert item["frame_names"] == [dataset.frame_name(video, f) for f in frames]
        assert item["support_img"].shape[0] == 5
        assert video not in item["support_videos"]
        assert len(set(item["support_videos"])) == 5


def test_test_masks_are_the_decoded_masks(ytvis_root):
    # frames of FRAME_SIZE letterboxed to the same size: the letterbox is the identity
    dataset = make(ytvis_root, "test", group=2, image_size=FRAME_SIZE)
    landscape = [i for i in range(len(dataset))
                 if dataset.index.videos[dataset.test_item(i)[1]].height == FRAME_SIZE[0]]
    for index in landscape[:3]:
        item = dataset[index]
        class_id, video = dataset.test_item(index)
        for t, frame in enumerate(dataset.query_frames_of(video, class_id)):
            np.testing.assert_array_equal(item["query_mask"][t, 0].numpy(),
                                          dataset.load_mask(video, frame, class_id).astype(np.float32))


def test_same_seed_same_episode_and_epochs_differ(ytvis_root):
    first = make(ytvis_root, "train", seed=7)
    second = make(ytvis_root, "train", seed=7)
    for index in (0, 13):
        a, b = first[index], second[index]
        for key in ("query_img", "query_mask", "support_img", "support_mask"):
            assert torch.equal(a[key], b[key])
        assert a["support_videos"] == b["support_videos"] and a["video"] == b["video"]
    first.set_epoch(1)
    assert not torch.equal(first[0]["query_img"], second[0]["query_img"])
    other_seed = make(ytvis_root, "train", seed=8)
    assert not torch.equal(other_seed[0]["query_img"], second[0]["query_img"])


def test_dataloader_workers_give_the_same_episodes(ytvis_root):
    dataset = make(ytvis_root, "train", seed=11, episodes_per_class=1)
    dataset.set_epoch(2)
    indices = [0, 5, 9, 17]
    direct = [dataset[i] for i in indices]
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=2, num_workers=2)
    batches = list(loader)
    stacked = torch.cat([b["query_img"] for b in batches])
    assert torch.equal(stacked, torch.stack([d["query_img"] for d in direct]))


def test_query_follows_the_clip_rule(ytvis_root):
    dataset = make(ytvis_root, "val", group=1, augment=False, image_size=FRAME_SIZE,
                   episodes_per_class=4)
    checked = 0
    for index in range(len(dataset)):
        item = dataset[index]
        class_id, video = dataset.class_of_index(index), item["video"]
        frames = dataset.query_frames_of(video, class_id)
        if dataset.index.videos[video].height != FRAME_SIZE[0]:
            continue
        # at most 6 class frames (6 per video): end points are [5] or [0], padded to three
        if len(frames) == 6:
            clip = frames[1:6]
        else:
            clip = (frames + [frames[-1]] * 5)[:5]
        for t in range(15):
            expected = dataset.load_mask(video, clip[t % 5], class_id).astype(np.float32)
            np.testing.assert_array_equal(item["query_mask"][t, 0].numpy(), expected)
        checked += 1
    assert checked > 20


# ------------------------------------------------------------------------------------ bad input
def test_missing_root_names_layout_and_command(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError) as err:
        YouTubeVISDataset(missing)
    message = str(err.value)
    assert missing in message and "train/train.json" in message
    assert "python -m synthetic youtube_vis" in message


def test_missing_annotation_file(tmp_path):
    (tmp_path / "train" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match="annotation file not found") as err:
        YouTubeVISDataset(str(tmp_path))
    assert str(tmp_path / "train" / "train.json") in str(err.value)


def test_corrupt_json(ytvis_root, tmp_path):
    root = copy_tree(ytvis_root, str(tmp_path / "copy"))
    path = os.path.join(root, "train", "train.json")
    with open(path, "rb") as handle:
        payload = handle.read()
    with open(path, "wb") as handle:
        handle.write(payload[: len(payload) // 2])
    with pytest.raises(DatasetError, match="not valid JSON") as err:
        YouTubeVISDataset(root)
    assert path in str(err.value)
    with open(path, "w") as handle:
        handle.write("")
    with pytest.raises(DatasetError, match="empty"):
        YouTubeVISDataset(root)
    with open(path, "w") as handle:
        json.dump({"videos": []}, handle)
    with pytest.raises(DatasetError, match="annotations"):
        YouTubeVISDataset(root)


def test_wrong_number_of_segmentations(ytvis_root, tmp_path, annotations):
    root = copy_tree(ytvis_root, str(tmp_path / "copy"))
    broken = json.loads(json.dumps(annotations))
    broken["annotations"][0]["segmentations"].append(None)
    with open(os.path.join(root, "train", "train.json"), "w") as handle:
        json.dump(broken, handle)
    with pytest.raises(DatasetError, match="segmentations for"):
        YouTubeVISDataset(root)


@pytest.mark.slow
def test_missing_frame_file_names_video_and_frame(ytvis_root, tmp_path):
    root = copy_tree(ytvis_root, str(tmp_path / "copy"))
    dataset = make(root, "test", group=1)
    class_id, video = dataset.test_item(0)
    frame = dataset.query_frames_of(video, class_id)[0]
    os.remove(dataset.frame_path(video, frame))
    with pytest.raises(DatasetError) as err:
        dataset[0]
    message = str(err.value)
    assert "missing frame file" in message and video in message
    assert dataset.frame_name(video, frame) in message


def test_class_with_fewer_videos_than_shots(tmp_path, caplog):
    root = write_synthetic_youtube_vis(str(tmp_path / "few"), seed=5, videos_per_class=2,
                                       frames_per_video=4, frame_size=FRAME_SIZE)
    with caplog.at_level(logging.WARNING, logger="dataset"):
        train = make(root, "train", group=1)
        item = train[0]
        assert item["support_img"].shape[0] == 5
        assert set(item["support_videos"]) <= set(train.videos_of_class(item["class_id"]))
        test = make(root, "test", group=1)
        item = test[0]
        assert item["support_img"].shape[0] == 5
    assert "some support videos are used twice" in caplog.text


def test_classes_without_videos_are_named_in_one_warning(tmp_path, caplog):
    root = write_synthetic_youtube_vis(str(tmp_path / "sixteen"), seed=7, videos_per_class=1,
                                       frames_per_video=2, frame_size=FRAME_SIZE, num_categories=16)
    with caplog.at_level(logging.WARNING, logger="dataset"):
        splits = [make(root, split, group=1) for split in ("train", "val", "test", "test")]
    assert splits[0].classes == [c for c in range(2, 17) if (c - 1) % 4 != 0]
    assert splits[2].classes == [1, 5, 9, 13]
    warnings = [r.getMessage() for r in caplog.records if "no video" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "24 of the 40 classes have no video" in warnings[0]
    assert warnings[0].endswith("left out: " + ", ".join(str(c) for c in range(17, 41)))


def test_class_with_a_single_video_at_test_time(tmp_path, caplog):
    root = write_synthetic_youtube_vis(str(tmp_path / "single"), seed=6, videos_per_class=1,
                                       frames_per_video=4, frame_size=FRAME_SIZE)
    dataset = make(root, "test", group=1)
    lonely = [i for i in range(len(dataset))
              if len(dataset.videos_of_class(dataset.test_item(i)[0])) == 1]
    assert lonely, "expected a class present in a single video"
    with caplog.at_level(logging.WARNING, logger="dataset"):
        item = dataset[lonely[0]]
    assert item["support_videos"] == [item["video"]] * 5
    assert "single video" in caplog.text


def _empty_rle(height, width):
    return {"counts": [height * width], "size": [height, width]}


@pytest.mark.slow
def test_empty_support_masks_are_drawn_as_the_authors_or_replaced_with_the_opt_in(ytvis_root, tmp_path, annotations,
                                                                                   caplog):
    """Half of class 2's instances hold present-but-empty segmentations. The default (the authors')
    draws some of those frames as supports, with empty masks; skip_empty_supports=True replaces
    them; both pick the same frame wherever the default's is not empty (same generator)."""
    root = copy_tree(ytvis_root, str(tmp_path / "copy"))
    data = json.loads(json.dumps(annotations))
    class_id = 2
    videos = {v["id"]: v for v in data["videos"]}
    touched = [a for a in data["annotations"] if a["category_id"] == class_id]
    emptied = set()
    for ann in touched[: len(touched) // 2]:          # half of the instances: empty but not null
        video = videos[ann["video_id"]]
        ann["segmentations"] = [None if s is None else _empty_rle(video["height"], video["width"])
                                for s in ann["segmentations"]]
        emptied.add(video["file_names"][0].split("/")[0])
    with open(os.path.join(root, "train", "train.json"), "w") as handle:
        json.dump(data, handle)
    skipping = make(root, "val", group=2, episodes_per_class=12, skip_empty_supports=True)
    authors = make(root, "val", group=2, episodes_per_class=12)
    start = skipping.classes.index(class_id) * 12
    empty_drawn = 0
    with caplog.at_level(logging.INFO, logger="dataset"):
        for index in range(start, start + 12):
            item = skipping[index]
            assert (item["support_mask"].flatten(1).sum(1) > 0).all()
            drawn = authors[index]
            empty = drawn["support_mask"].flatten(1).sum(1) == 0
            empty_drawn += int(empty.sum())
            if not empty.any():
                assert drawn["support_videos"] == item["support_videos"]
                assert torch.equal(drawn["support_img"], item["support_img"])
    assert emptied and empty_drawn > 0
    assert "kept, as the authors do" in caplog.text


def test_all_support_masks_empty_is_not_a_crash(ytvis_root, tmp_path, annotations, caplog):
    root = copy_tree(ytvis_root, str(tmp_path / "copy"))
    data = json.loads(json.dumps(annotations))
    videos = {v["id"]: v for v in data["videos"]}
    for ann in data["annotations"]:
        if ann["category_id"] == 2:
            video = videos[ann["video_id"]]
            ann["segmentations"] = [None if s is None else _empty_rle(video["height"], video["width"])
                                    for s in ann["segmentations"]]
    with open(os.path.join(root, "train", "train.json"), "w") as handle:
        json.dump(data, handle)
    dataset = make(root, "val", group=2, episodes_per_class=1, skip_empty_supports=True)
    with caplog.at_level(logging.WARNING, logger="dataset"):
        item = dataset[dataset.classes.index(2)]
    assert item["support_mask"].sum() == 0 and item["query_mask"].sum() == 0
    assert "empty mask" in caplog.text


def test_portrait_videos_are_letterboxed_at_test_time(ytvis_root):
    index = index_annotations(os.path.join(ytvis_root, "train", "train.json"))
    portrait = [name for name, rec in index.videos.items() if rec.height > rec.width]
    assert len(portrait) == 2
    record = index.videos[portrait[0]]
    class_id = next(iter(record.class_frames))
    test = make(ytvis_root, "test", group=(class_id - 1) % 4 + 1)
    item = test[[i for i in range(len(test)) if test.test_item(i) == (class_id, portrait[0])][0]]
    new_height, new_width, top, left = letterbox_geometry(record.height, record.width, *IMAGE_SIZE)
    assert top == 0 and left > 0 and new_height == IMAGE_SIZE[0]
    # no transpose: the frame occupies a centred column band, the rest is padding
    assert item["query_mask"][..., :left].sum() == 0 and item["query_mask"][..., left + new_width:].sum() == 0
    assert item["query_mask"].sum() > 0
    padding = item["query_img"][0, :, 0, 0]
    np.testing.assert_allclose(padding.numpy(), -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-5)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"image_size": (60, 112)}, "multiple of 8"),
    ({"query_frames": 12}, "multiple of the clip length"),
    ({"group": 5}, "group"),
    ({"split": "dev"}, "split"),
    ({"support_shots": 0}, "support_shots"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters(ytvis_root, kwargs, pattern):
    with pytest.raises(DatasetError, match=pattern):
        make(ytvis_root, **kwargs)


def test_build_dataset_rejects_unknown_names(ytvis_root):
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset("davis", root=ytvis_root)
    with pytest.raises(DatasetError, match="lists_dir"):
        build_dataset("youtube_vis", root=ytvis_root, lists_dir="x")


def test_an_episode_key_is_a_fresh_episode_of_its_class(ytvis_root):
    """The authors' sampler replaces a repeated class by an EpisodeKey: an episode of the key's class,
    with its own random draws (not a copy of an item of that class)."""
    from dataset import EpisodeKey

    dataset = make(ytvis_root, "train", group=1, episodes_per_class=2)
    first, other = dataset.classes[0], dataset.classes[1]
    item = dataset[EpisodeKey(0, other)]
    assert item["class_id"] == other and dataset.class_of_index(EpisodeKey(0, other)) == other
    assert item["video"] in dataset.videos_of_class(other)
    assert set(item["support_videos"]) <= set(dataset.videos_of_class(other))
    same = [dataset[i] for i in range(len(dataset)) if dataset.class_of_index(i) == other]
    assert all(not torch.equal(item["query_img"], s["query_img"]) for s in same)
    assert torch.equal(dataset[EpisodeKey(0, other)]["query_img"], item["query_img"])     # deterministic
    assert dataset[0]["class_id"] == first
    with pytest.raises(DatasetError, match="not a train class"):
        dataset[EpisodeKey(0, 1)]                                  # class 1 is held out in group 1
