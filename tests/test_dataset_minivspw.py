"""MiniVSPW: list generation from a VSPW tree, the loader, its index cache, bad input."""

import filecmp
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import DatasetError, EpisodeSpec, MiniVSPWDataset, build_dataset
from synthetic import write_synthetic_vspw
from dataset.minivspw import cache_file
from dataset.minivspw_lists import PublishedList, check_lists, fold_class_names, generate_lists, main as lists_main

FRAME_SIZE = (64, 112)
SPEC = EpisodeSpec(image_size=FRAME_SIZE)
# the TTI split (docs/protocol.md), VSPW ids
TEST_IDS = [{57, 52, 55, 85, 111}, {50, 49, 62, 91, 51}, {63, 64, 53, 61, 90}, {109, 93, 124, 115, 65}]
# The published class files of the TTI repository, verbatim (ids, names and order).
PUBLISHED_CLASS_FILES = {
    "class_test_0.json": '{"57": "airplane", "52": "bicycle", "55": "ship_or_boat", "85": "bottle_or_cup", '
                         '"111": "book"}',
    "class_val_0.json": '{"113": "blackboard", "47": "tent", "51": "truck", "45": "parasol_or_umbrella", '
                        '"46": "cushion_or_carpet"}',
    "class_train_0.json": '{"50": "bus", "49": "car", "62": "cat", "91": "chair_or_seat", "65": "cattle", '
                          '"90": "table_or_desk", "63": "dog", "64": "horse", "53": "motorcycle", "61": "person", '
                          '"109": "flower_pot_or_vase", "93": "sofa", "124": "train", "115": "screen_or_television", '
                          '"41": "billboard_or_Bulletin_Board"}',
    "class_train_2.json": '{"57": "airplane", "52": "bicycle", "55": "ship_or_boat", "85": "bottle_or_cup", '
                          '"50": "bus", "49": "car", "62": "cat", "91": "chair_or_seat", "65": "cattle", '
                          '"109": "flower_pot_or_vase", "93": "sofa", "124": "train", "115": "screen_or_television", '
                          '"111": "book", "51": "truck"}',
}
# Validation classes per fold, in the class files' order (docs/protocol.md, "Datasets and folds")
VAL_IDS = [[113, 47, 51, 45, 46], [41, 113, 111, 45, 46], [113, 41, 45, 46, 47], [113, 41, 45, 46, 47]]
ALL_IDS = set().union(*TEST_IDS) | {113, 41, 45, 46, 47}


@pytest.fixture(scope="module")
def vspw_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw") / "VSPW_480p")
    return write_synthetic_vspw(root, seed=4, val_videos_per_class=6, train_videos_per_class=2,
                                frames_per_video=4, frame_size=FRAME_SIZE)


def lists_dir(root):
    return os.path.join(root, "lists", "nminivspw_pascal")


def read_lines(path):
    with open(path) as handle:
        return [line.split() for line in handle if line.strip()]


def labels(root, video, stem):
    return np.asarray(Image.open(os.path.join(root, "data", video, "mask", stem + ".png")))


def class_ids_in_order(root, split, fold):
    with open(os.path.join(lists_dir(root), f"class_{split}_{fold}.json")) as handle:
        return [int(k) for k in json.load(handle)]      # JSON objects keep their order


def test_class_files_are_the_published_ones(vspw_root):
    for name, text in PUBLISHED_CLASS_FILES.items():
        with open(os.path.join(lists_dir(vspw_root), name)) as handle:
            assert handle.read() == text, name
    for fold in range(4):
        test, val, train = (class_ids_in_order(vspw_root, split, fold) for split in ("test", "val", "train"))
        assert set(test) == TEST_IDS[fold] and len(test) == 5
        assert val == VAL_IDS[fold]
        assert set(train) == ALL_IDS - set(test) - set(val) and len(train) == 15
    # fold 0 trains billboard (41) and validates truck (51); fold 1 trains tent (47), validates book (111)
    assert 41 in class_ids_in_order(vspw_root, "train", 0) and 51 not in class_ids_in_order(vspw_root, "train", 0)
    assert 47 in class_ids_in_order(vspw_root, "train", 1) and 111 not in class_ids_in_order(vspw_root, "train", 1)
    # the loader keeps the class files' order (it decides which class episode i belongs to)
    assert MiniVSPWDataset(vspw_root, split="val", group=2, spec=SPEC).classes == VAL_IDS[1]


def test_list_lines_follow_the_rule(vspw_root):
    with open(os.path.join(vspw_root, "train.txt")) as handle:
        train_videos = {line.strip() for line in handle}
    with open(os.path.join(vspw_root, "val.txt")) as handle:
        val_videos = {line.strip() for line in handle}
    fold = 1
    for split, videos in (("train", train_videos), ("val", val_videos), ("test", val_videos)):
        with open(os.path.join(lists_dir(vspw_root), f"class_{split}_{fold}.json")) as handle:
            ids = [int(k) for k in json.load(handle)]
        lines = read_lines(os.path.join(lists_dir(vspw_root), f"{split}_{fold}.txt"))
        assert lines
        listed = set()
        for video, mask_path in lines:
            assert video in videos and mask_path.startswith(f"{video}/mask/") and mask_path.endswith(".png")
            stem = os.path.basename(mask_path)[:-4]
            counts = np.bincount(labels(vspw_root, video, stem).ravel(), minlength=256)
            assert max(counts[c] for c in ids) > 100
            listed.add((video, stem))
        # and no frame with a split class over 100 pixels is missing
        for video in sorted(videos)[:10]:
            for name in os.listdir(os.path.join(vspw_root, "data", video, "mask")):
                counts = np.bincount(labels(vspw_root, video, name[:-4]).ravel(), minlength=256)
                assert (max(counts[c] for c in ids) > 100) == ((video, name[:-4]) in listed)


def test_list_videos_follow_the_split_file_order(vspw_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(vspw_root, root, ignore=shutil.ignore_patterns("lists"))
    with open(os.path.join(root, "val.txt")) as handle:
        videos = [line.strip() for line in handle if line.strip()]
    with open(os.path.join(root, "val.txt"), "w") as handle:
        handle.writelines(v + "\n" for v in reversed(videos))
    generate_lists(root, show_progress=False)
    original = read_lines(os.path.join(lists_dir(vspw_root), "test_0.txt"))
    reordered = read_lines(os.path.join(lists_dir(root), "test_0.txt"))
    assert sorted(original) == sorted(reordered)
    order = list(dict.fromkeys(video for video, _ in reordered))
    assert order == [v for v in reversed(videos) if v in order] and len(order) > 1
    for video in order:                                     # frames stay sorted within a video
        stems = [path for v, path in reordered if v == video]
        assert stems == sorted(stems)


def published_numbers(folder):
    """Line count, distinct videos and SHA-256 prefix of each list file, computed here."""
    table = {}
    for name in os.listdir(folder):
        if name.endswith(".txt"):
            with open(os.path.join(folder, name), "rb") as handle:
                data = handle.read()
            videos = {line.split()[0] for line in data.decode().split("\n") if line.strip()}
            table[name] = PublishedList(data.count(b"\n"), len(videos), hashlib.sha256(data).hexdigest()[:16])
    return table


def test_check_names_every_file_that_differs_from_the_published_lists(vspw_root, tmp_path, capsys):
    folder = str(tmp_path / "lists")
    shutil.copytree(lists_dir(vspw_root), folder)
    # synthetic lists against the real published numbers: the class files match, the 9 lists with
    # published numbers do not
    assert lists_main(["--check", folder]) == 1
    out, err = capsys.readouterr()
    published = ["test_0.txt", "test_1.txt", "test_2.txt", "test_3.txt", "val_0.txt", "val_1.txt", "val_2.txt",
                 "val_3.txt", "train_2.txt"]
    assert all(f"DIFFERS {name}" in out and name in err for name in published)
    assert all(f"ok      class_{split}_{fold}.json" in out for split in ("train", "val", "test") for fold in range(4))
    assert "unknown train_0.txt" in out and "train_0.txt" not in err
    assert "lines " in out and "(published 3140)" in out
    # against numbers that fit these files, everything matches; then break two files
    table = published_numbers(folder)
    assert all(r.ok for r in check_lists(folder, table))
    with open(os.path.join(folder, "val_1.txt")) as handle:
        lines = handle.readlines()
    with open(os.path.join(folder, "val_1.txt"), "w") as handle:
        handle.writelines(lines[:-1])
    with open(os.path.join(folder, "class_train_3.json")) as handle:
        classes = list(json.load(handle).items())
    with open(os.path.join(folder, "class_train_3.json"), "w") as handle:
        json.dump(dict(classes[1:] + classes[:1]), handle)            # same classes, other order
    os.remove(os.path.join(folder, "test_2.txt"))
    results = {r.name: r for r in check_lists(folder, table)}
    assert sorted(n for n, r in results.items() if not r.ok) == ["class_train_3.json", "test_2.txt", "val_1.txt"]
    assert f"lines {len(lines) - 1} (published {len(lines)})" in results["val_1.txt"].detail
    assert results["test_2.txt"].detail == "missing"
    assert lists_main(["--check", str(tmp_path / "absent")]) == 2


def test_fold_spec_derives_training_classes_in_order():
    folds = fold_class_names({"test": [["a"], ["b"], ["c"], ["d"]], "val": ["e"], "classes": list("edcba")})
    assert [f.train for f in folds] == [list("dcb"), list("dca"), list("dba"), list("cba")]
    assert all(f.val == ["e"] for f in folds)
    with pytest.raises(DatasetError, match="not in its"):
        fold_class_names({"test": [["a"], ["b"], ["c"], ["z"]], "val": ["e"], "classes": list("edcba")})


def test_generation_is_deterministic(vspw_root, tmp_path):
    out = str(tmp_path / "again")
    assert lists_main(["--vspw-root", vspw_root, "--out", out, "--workers", "2"]) == 0
    names = sorted(os.listdir(out))
    assert len([n for n in names if n.endswith(".txt")]) == 12
    assert len([n for n in names if n.endswith(".json") and n.startswith("class_")]) == 12
    match, mismatch, errors = filecmp.cmpfiles(out, lists_dir(vspw_root), names, shallow=False)
    assert not mismatch and not errors and sorted(match) == names


def test_episodes_and_masks(vspw_root):
    for split in ("train", "val"):
        dataset = build_dataset("minivspw", root=vspw_root, split=split, group=1, spec=SPEC,
                                episodes_per_class=2)
        item = dataset[1]
        assert item["query_img"].shape == (15, 3, *FRAME_SIZE)
        assert item["support_mask"].shape == (5, 1, *FRAME_SIZE)
        assert (item["support_mask"].flatten(1).sum(1) > 0).all()
    dataset = MiniVSPWDataset(vspw_root, split="test", group=3, spec=SPEC)
    assert set(dataset.classes) == TEST_IDS[2]
    assert dataset.class_name(61) == "person"
    class_id, video = dataset.test_item(0)
    item = dataset[0]
    stems = sorted(n[:-4] for n in os.listdir(os.path.join(vspw_root, "data", video, "origin")))
    assert item["frame_names"] == stems                      # the whole video is the query
    for t, stem in enumerate(stems):                         # same size: letterbox = identity
        expected = (labels(vspw_root, video, stem) == class_id).astype(np.float32)
        np.testing.assert_array_equal(item["query_mask"][t, 0].numpy(), expected)
    assert video not in item["support_videos"]
    support_frames = [dataset.support_frames_of(v, class_id) for v in item["support_videos"]]
    assert all(support_frames)


def test_same_seed_same_episode(vspw_root):
    a = MiniVSPWDataset(vspw_root, split="train", group=2, spec=SPEC, seed=3)
    b = MiniVSPWDataset(vspw_root, split="train", group=2, spec=SPEC, seed=3)
    assert torch.equal(a[17]["query_img"], b[17]["query_img"])
    assert torch.equal(a[17]["support_mask"], b[17]["support_mask"])


def test_index_cache_is_used_and_invalidated(vspw_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(vspw_root, root)
    cache = cache_file(lists_dir(root), "test", 0)
    with open(cache) as handle:
        written_by_generator = json.load(handle)
    os.remove(cache)
    dataset = MiniVSPWDataset(root, split="test", group=1, spec=SPEC, show_progress=False)
    with open(cache) as handle:
        rebuilt = json.load(handle)
    assert rebuilt == written_by_generator                 # loader and generator agree
    assert not [n for n in os.listdir(lists_dir(root)) if n.endswith(".tmp")]
    # a changed list invalidates the cache: keep only the first video's lines
    list_path = os.path.join(lists_dir(root), "test_0.txt")
    lines = read_lines(list_path)
    keep = [line for line in lines if line[0] == lines[0][0]]
    with open(list_path, "w") as handle:
        handle.writelines(f"{a} {b}\n" for a, b in keep)
    smaller = MiniVSPWDataset(root, split="test", group=1, spec=SPEC, show_progress=False)
    assert len(smaller) < len(dataset)
    assert all(smaller.videos_of_class(c) == [lines[0][0]] for c in smaller.classes)


def test_missing_lists_say_how_to_generate_them(tmp_path, vspw_root):
    root = str(tmp_path / "nolists")
    shutil.copytree(vspw_root, root, ignore=shutil.ignore_patterns("lists"))
    with pytest.raises(DatasetError) as err:
        MiniVSPWDataset(root, split="train", group=1)
    assert "python -m dataset.minivspw_lists" in str(err.value)
    assert os.path.join(root, "lists", "nminivspw_pascal", "train_0.txt") in str(err.value)
    with pytest.raises(DatasetError, match="VSPW dataset directory not found"):
        MiniVSPWDataset(str(tmp_path / "absent"))


def test_generator_bad_input(tmp_path, vspw_root):
    root = str(tmp_path / "copy")
    shutil.copytree(vspw_root, root, ignore=shutil.ignore_patterns("lists"))
    label_file = os.path.join(root, "label_num_dic_final.json")
    with open(label_file) as handle:
        names = json.load(handle)
    del names["airplane"]
    with open(label_file, "w") as handle:
        json.dump(names, handle)
    with pytest.raises(DatasetError, match="airplane"):
        generate_lists(root, show_progress=False)
    os.remove(label_file)
    with pytest.raises(DatasetError, match="label file not found"):
        generate_lists(root, show_progress=False)
    assert lists_main(["--vspw-root", str(tmp_path / "absent")]) == 2


def test_missing_mask_file_names_video_and_frame(tmp_path, vspw_root):
    root = str(tmp_path / "copy")
    shutil.copytree(vspw_root, root)
    dataset = MiniVSPWDataset(root, split="test", group=1, spec=SPEC)
    class_id, video = dataset.test_item(0)
    stem = dataset.query_frames_of(video, class_id)[-1]
    os.remove(os.path.join(root, "data", video, "mask", stem + ".png"))
    with pytest.raises(DatasetError) as err:
        dataset[0]
    assert video in str(err.value) and stem in str(err.value)
