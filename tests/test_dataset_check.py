"""The dataset pre-flight: every bad frame and mask of the used splits, reported in one run."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dataset import DatasetError, EpisodeSpec, build_dataset
from synthetic import write_synthetic_vspw, write_synthetic_youtube_vis
from dataset.check import BadFile, check_dataset, check_dataset_report, find_bad_files, main, raise_if_bad


@pytest.fixture(scope="module")
def vspw_clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw") / "VSPW_480p")
    return write_synthetic_vspw(root, seed=1, val_videos_per_class=2, train_videos_per_class=1,
                                frames_per_video=2, frame_size=(64, 112))


@pytest.fixture(scope="module")
def ytvis_clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ytvis") / "ytvis")
    return write_synthetic_youtube_vis(root, seed=1, videos_per_class=2, frames_per_video=3,
                                       frame_size=(64, 64), num_categories=4)


def listed_frames(root: str, split: str, fold: int):
    with open(os.path.join(root, "lists", "nminivspw_pascal", f"{split}_{fold}.txt")) as f:
        return [line.split()[1] for line in f if line.strip()]      # <video>/mask/<frame>.png


def truncate(path: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_truncated_jpeg_and_corrupt_png_mask_are_both_reported(vspw_clean, tmp_path, capsys):
    root = str(tmp_path / "VSPW_480p")
    shutil.copytree(vspw_clean, root)
    assert main(["--dataset", "minivspw", "--data-root", root, "--group", "1"]) == 0
    capsys.readouterr()
    training_videos = {m.split("/")[0] for split in ("train", "val") for m in listed_frames(root, split, 0)}
    test_mask = next(m for m in listed_frames(root, "test", 0) if m.split("/")[0] not in training_videos)
    train_mask = listed_frames(root, "train", 0)[-1]
    jpeg = os.path.join(root, "data", train_mask.replace("/mask/", "/origin/").replace(".png", ".jpg"))
    png = os.path.join(root, "data", test_mask)
    truncate(jpeg)
    data = open(png, "rb").read()
    rng = np.random.default_rng(0)
    with open(png, "wb") as f:                                       # valid header, garbage pixel data
        f.write(data[:60] + rng.integers(0, 256, len(data) - 60, dtype=np.uint8).tobytes())

    assert main(["--dataset", "minivspw", "--data-root", root, "--group", "1"]) == 2
    out, err = capsys.readouterr()
    lines = {line.split(": ", 1)[0]: line for line in out.splitlines()}
    assert sorted(lines) == sorted([png, jpeg]), out
    assert lines[png].startswith(f"{png}: video ") and "cannot be decoded" in lines[png]
    assert lines[jpeg].startswith(f"{jpeg}: video ") and "truncated" in lines[jpeg]
    assert "2 bad file(s)" in err
    # the splits in use only: training does not read the mask of a test-only video
    bad, _ = check_dataset("minivspw", root, group=1, splits=["train", "val"])
    assert [b.path for b in bad] == [jpeg]


def test_youtube_vis_frames_of_a_built_split(ytvis_clean, tmp_path):
    root = str(tmp_path / "ytvis")
    shutil.copytree(ytvis_clean, root)
    train = build_dataset("youtube_vis", root=root, split="train", group=1)
    assert find_bad_files(train) == []
    used = [(v, f) for c in train.classes for v in train.videos_of_class(c) for f in train.query_frames_of(v, c)]
    truncated, missing, resized = sorted({train.frame_path(v, f) for v, f in used})[:3]
    truncate(truncated)
    os.remove(missing)
    Image.new("RGB", (32, 48)).save(resized, format="JPEG")         # decodes, but not the mask's size
    bad = find_bad_files(train)
    assert [b.path for b in bad] == sorted([truncated, missing, train.annotation_file])
    reasons = {b.path: b.reason for b in bad}
    assert "truncated" in reasons[truncated] and "file not found" in reasons[missing]
    assert f"mask size 64x64 differs from the frame size 48x32 of {resized}" in reasons[train.annotation_file]
    with pytest.raises(DatasetError) as err:
        raise_if_bad(bad)
    assert str(err.value).startswith("3 bad dataset file(s)") and truncated in str(err.value)
    raise_if_bad([])                                                  # nothing to report


def test_undecodable_annotation_is_reported_with_its_class(ytvis_clean, tmp_path):
    import json

    root = str(tmp_path / "ytvis")
    shutil.copytree(ytvis_clean, root)
    path = os.path.join(root, "train", "train.json")
    data = json.load(open(path))
    ann = next(a for a in data["annotations"] if any(isinstance(s, dict) and isinstance(s.get("counts"), list)
                                                     for s in a["segmentations"]))
    frame = next(i for i, s in enumerate(ann["segmentations"]) if isinstance(s, dict))
    ann["segmentations"][frame]["counts"] = [1, 2, 3]                # does not sum to height*width
    json.dump(data, open(path, "w"))
    bad, _ = check_dataset("youtube_vis", root, group=1)
    assert len(bad) == 1 and bad[0].path == path
    assert bad[0].reason.startswith(f"class {ann['category_id']}: video ") and "counts sum to 6" in bad[0].reason


def test_a_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(DatasetError, match="list file not found"):
        check_dataset("minivspw", str(tmp_path), group=1)
    assert str(BadFile("a.jpg", "file not found")) == "a.jpg: file not found"


def test_skimmed_arrays_resolve_correctly_from_many_threads(ytvis_clean):
    """dataset.check decodes masks in a thread pool; reading skimmed arrays must not share a file offset."""
    from concurrent.futures import ThreadPoolExecutor
    from dataset.youtube_vis import PLACEHOLDER_PREFIX, index_annotations

    index = index_annotations(os.path.join(ytvis_clean, "train", "train.json"))
    placeholders = [f"{PLACEHOLDER_PREFIX}{k}" for k in range(len(index.arrays.starts))]
    assert len(placeholders) > 10
    expected = [index.arrays.resolve(p) for p in placeholders]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rounds = list(pool.map(lambda _: [index.arrays.resolve(p) for p in placeholders], range(64)))
    assert all(found == expected for found in rounds)


def test_present_but_empty_segmentations_are_counted_per_class(ytvis_clean, tmp_path, capsys):
    import json

    root = str(tmp_path / "ytvis")
    shutil.copytree(ytvis_clean, root)
    path = os.path.join(root, "train", "train.json")
    data = json.load(open(path))
    videos = {v["id"]: v for v in data["videos"]}
    ann = next(a for a in data["annotations"] if a["category_id"] == 3 and sum(s is not None for s in a["segmentations"]) >= 2)
    others = [a for a in data["annotations"] if a["category_id"] == 3 and a["video_id"] == ann["video_id"] and a is not ann]
    video = videos[ann["video_id"]]
    frames = [i for i, s in enumerate(ann["segmentations"]) if s is not None
              and all(o["segmentations"][i] is None for o in others)][:2]     # no other class-3 instance there
    assert frames
    for i in frames:
        ann["segmentations"][i] = {"counts": [video["height"] * video["width"]], "size": [video["height"], video["width"]]}
    json.dump(data, open(path, "w"))
    assert main(["--dataset", "youtube_vis", "--data-root", root, "--group", "1"]) == 0
    err = capsys.readouterr().err
    assert f"class 3: {len(frames)} of its " in err
    assert f"present-but-empty segmentations: {len(frames)} of " in err and "in 1 of 4 classes" in err
    assert "skip_empty_supports=true" in err


def test_unknown_category_ids_and_degenerate_annotations_are_listed(ytvis_clean, tmp_path, caplog):
    import json

    root = str(tmp_path / "ytvis")
    shutil.copytree(ytvis_clean, root)
    path = os.path.join(root, "train", "train.json")
    data = json.load(open(path))
    annotations = data["annotations"]
    for category in (0, 99, 99):                               # dropped by every fold
        annotations.append(dict(annotations[0], id=len(annotations) + 100, category_id=category))
    degenerate = next(a for a in annotations if a["category_id"] == 1)   # class 1: the test split of group 1
    present = [i for i, seg in enumerate(degenerate["segmentations"]) if seg is not None]
    degenerate["segmentations"] = [[[1.0, 1.0, 5.0, 5.0]] if seg is not None else None       # 2 points
                                   for seg in degenerate["segmentations"]]
    json.dump(data, open(path, "w"))
    with caplog.at_level("WARNING"):
        bad, _ = check_dataset("youtube_vis", root, group=1, splits=["test"])
    expected = "3 annotation(s) have category ids outside 1..40, the YouTube-VIS 2019 classes (id 0: 1, id 99: 2)"
    assert any(expected in record.getMessage() for record in caplog.records)   # when indexing, for training too
    assert BadFile(path, expected + "; no fold uses them") in bad
    assert not [b for b in bad if b.path != path]      # degenerate masks decode empty: counted, not bad files
    report = check_dataset_report("youtube_vis", root, group=1, splits=["test"])
    assert report.empty_segmentations[1][0] == len(present) > 0


def test_a_split_whose_every_annotation_is_degenerate_is_refused_when_built(ytvis_clean, tmp_path, caplog):
    import json

    root = str(tmp_path / "ytvis")
    shutil.copytree(ytvis_clean, root)
    path = os.path.join(root, "train", "train.json")
    data = json.load(open(path))
    kept = next(a for a in data["annotations"] if a["category_id"] == 1)
    for annotation in data["annotations"]:
        if annotation is not kept:
            annotation["segmentations"] = [[[1.0, 1.0, 5.0, 5.0]] if seg is not None else None
                                           for seg in annotation["segmentations"]]
    json.dump(data, open(path, "w"))
    with pytest.raises(DatasetError, match=r"annotations of the train classes are degenerate .* nothing to learn"):
        build_dataset("youtube_vis", root=root, split="train", group=1, spec=EpisodeSpec(image_size=(64, 64)))
    with caplog.at_level("WARNING"):        # class 1 (test) keeps one good annotation: a warning names the other
        build_dataset("youtube_vis", root=root, split="test", group=1, spec=EpisodeSpec(image_size=(64, 64)))
    total = sum(a["category_id"] == 1 and any(seg is not None for seg in a["segmentations"])
                for a in data["annotations"])
    expected = f"{total - 1} of the {total} annotations of the test classes are degenerate"
    assert total > 1 and any(expected in r.getMessage() for r in caplog.records)
