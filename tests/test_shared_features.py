"""test.py shares a query video's backbone features across the held-out classes it is tested for,
with the numbers of one query at a time (issue 29 item 2)."""
from __future__ import annotations

import json
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from helpers import reference_case, reference_model
from models import QueryVideo, VideoSegmenter
from scripts_support import load_script, run
from synthetic import write_synthetic_youtube_vis

SIZE = (64, 112)
CLIP = 5
HELD_OUT = (1, 5)                # fold 1 of 8 categories: ids with (id - 1) % 4 == 0


@pytest.fixture(scope="module")
def model():
    return reference_model(0, SIZE)


def frames_of(seed: int, count: int):
    x = reference_case.reference_inputs(seed, 1, count, 2, size=SIZE)
    return x["query_img"][0], x["support_img"][0], x["support_mask"][0]


class FrameCounter:
    """Counts the frames through ``VIPMT.extract_features`` (query clips and supports)."""

    def __init__(self, monkeypatch):
        from models.vipmt import VIPMT

        self.frames = 0
        extract = VIPMT.extract_features

        def counted(model, images):
            self.frames += images.shape[0] * images.shape[1]
            return extract(model, images)

        monkeypatch.setattr(VIPMT, "extract_features", counted)


@pytest.mark.slow
def test_segment_shared_equals_segment_and_encodes_each_shared_clip_once(model, monkeypatch):
    """Four queries cut from one 12-frame video, each with its own supports and generator: the
    whole list (a), its first 7 frames (b: clip 1 shared with a), frames 2..11 (c: its clips start
    elsewhere, nothing shared), and a's frames with other pixels under the same names (d: a
    letterbox that differs; nothing shared). Each result equals ``segment`` of that query alone,
    bit for bit, and the backbone sees 12 + 2 + 10 + 12 query frames instead of 12 + 7 + 10 + 12."""
    frames, _, _ = frames_of(60, 12)
    names = [f"{5 * t:05d}" for t in range(12)]
    supports = [frames_of(61 + k, 1)[1:] for k in range(4)]
    queries = [(frames, names), (frames[:7], names[:7]), (frames[2:], names[2:]), (frames + 0.5, names)]
    segmenter = VideoSegmenter(model, memory_threshold=0.0, memory_size=2)
    videos = [QueryVideo(f, *supports[k], generator=torch.Generator().manual_seed(k), frame_ids=ids)
              for k, (f, ids) in enumerate(queries)]
    counter = FrameCounter(monkeypatch)
    shared = segmenter.segment_shared(videos)
    assert counter.frames == 12 + 2 + 10 + 12 + 4 * 2                 # query frames + 2 supports each
    counter.frames = 0
    alone = [segmenter.segment(v.frames, v.support_img, v.support_mask, generator=torch.Generator().manual_seed(k))
             for k, v in enumerate(videos)]
    assert counter.frames == 12 + 7 + 10 + 12 + 4 * 2
    for k, (a, b) in enumerate(zip(shared, alone)):
        assert torch.equal(a.pred, b.pred) and torch.equal(a.score, b.score), k


@pytest.mark.slow
def test_queries_without_frame_ids_share_nothing(model, monkeypatch):
    frames, _, _ = frames_of(70, 6)
    supports = [frames_of(71 + k, 1)[1:] for k in range(2)]
    segmenter = VideoSegmenter(model)
    counter = FrameCounter(monkeypatch)
    segmenter.segment_shared([QueryVideo(frames, *s) for s in supports])
    assert counter.frames == 2 * (6 + 2)


# ----------------------------------------------------------------------------------------- test.py


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(s) for s in rle["size"]]}


def add_second_class(root: str) -> None:
    """Make two of class 1's videos also show class 5 (the other held-out class of fold 1): the
    first on every frame where class 1 is present (the same query frames), the second on its
    first 5 frames only (its first clip is shared)."""
    path = os.path.join(root, "train", "train.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    main = {}
    for ann in data["annotations"]:
        if ann["category_id"] == 1:
            main.setdefault(ann["video_id"], ann)
    videos = {v["id"]: v for v in data["videos"]}
    for number, (video_id, ann) in enumerate(list(main.items())[:2]):
        video = videos[video_id]
        height, width = video["height"], video["width"]
        box = np.zeros((height, width), np.uint8)
        box[4:20, 30:60] = 1
        present = [seg is not None for seg in ann["segmentations"]]
        if number == 1:
            present = [t < CLIP for t in range(len(present))]
        segs = [_rle(box) if p else None for p in present]
        data["annotations"].append({"id": len(data["annotations"]) + 1, "video_id": video_id, "category_id": 5,
                                    "segmentations": segs, "areas": [float(box.sum()) if p else None for p in present],
                                    "bboxes": [[30.0, 4.0, 30.0, 16.0] if p else None for p in present],
                                    "iscrowd": 0, "width": width, "height": height, "length": len(present)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def frames_saved(root: str) -> tuple[int, int]:
    """(queries whose video is tested for another held-out class, query frames sharing saves), read
    from train.json: per video, each clip of CLIP frames (cut from the class's first frame) that
    several held-out classes hold is encoded once instead of once per class."""
    with open(os.path.join(root, "train", "train.json"), encoding="utf-8") as f:
        data = json.load(f)
    present = {}                                           # (video, class) -> frames where present
    for ann in data["annotations"]:
        if ann["category_id"] in HELD_OUT:
            frames = present.setdefault((ann["video_id"], ann["category_id"]), set())
            frames.update(t for t, seg in enumerate(ann["segmentations"]) if seg is not None)
    queries = saved = 0
    for video in {v for v, _ in present}:
        lists = [sorted(present[(video, c)]) for c in HELD_OUT if (video, c) in present]
        if len(lists) < 2:
            continue
        queries += len(lists)
        clips = [tuple(frames[s:s + CLIP]) for frames in lists for s in range(0, len(frames), CLIP)]
        saved += sum(len(clip) for clip in clips) - sum(len(clip) for clip in set(clips))
    return queries, saved


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shared") / "ytvis")
    write_synthetic_youtube_vis(root, seed=0, videos_per_class=3, frames_per_video=8, frame_size=(64, 64),
                                num_categories=8)
    add_second_class(root)
    return root


ARGS = ["--checkpoint", "none", "--backbone-weights", "none", "--device", "cpu", "image_size=64,64",
        "num_workers=0", "support_shots=2", "memory_threshold=0", "memory_size=1"]


@pytest.mark.slow
def test_test_py_shares_features_with_the_same_results(shared_data, tmp_path, monkeypatch):
    """test.py on a fold where some videos hold both held-out classes: the results JSON (every
    per-video entry, every run's means and the aggregate) equals that of one query at a time, and
    the backbone sees exactly the frames of the clips the classes share fewer."""
    from vipmt import evaluation

    queries, saved = frames_saved(shared_data)
    assert queries == 4 and saved >= 2 * CLIP               # the two videos made above
    test_script = load_script("test")
    counter = FrameCounter(monkeypatch)
    counts, results = {}, {}
    for mode in ("shared", "one at a time"):
        if mode == "one at a time":
            monkeypatch.setattr(evaluation, "shares_features", lambda segmenter, video_batch: False)
        counter.frames = 0
        out = tmp_path / f"{mode.replace(' ', '_')}.json"
        assert run(test_script, ["--data-root", shared_data, "--output", out] + ARGS) == 0
        counts[mode], results[mode] = counter.frames, json.loads(out.read_text())
    shared, alone = results["shared"], results["one at a time"]
    assert {v["class_id"] for v in alone["runs"][0]["videos"]} == set(HELD_OUT)
    assert shared["runs"] == alone["runs"] and shared["aggregate"] == alone["aggregate"]
    assert counts["one at a time"] - counts["shared"] == saved
    frames = sum(v["frames"] for v in alone["runs"][0]["videos"])        # the log says it too
    assert (f"{queries} of the {len(alone['runs'][0]['videos'])} queries share their video with another class: "
            f"the backbone encodes {frames - saved} query frames instead of {frames}") in (tmp_path / "shared.log").read_text()


@pytest.mark.slow
def test_two_processes_keep_a_video_together_and_give_the_numbers_of_one(shared_data, monkeypatch):
    """evaluate_split as rank 0 and rank 1 of 2 (the gather simulated in this process): each video's
    queries are segmented by one rank, and rank 0 returns the per-video entries and means of one
    process."""
    from vipmt import evaluation
    from vipmt.cli import resolve_config

    cfg = resolve_config({}, {"youtube_vis_root": shared_data, "image_size": [64, 64], "num_workers": 0,
                              "support_shots": 2, "memory_threshold": 0.0, "memory_size": 1})
    segmenter = VideoSegmenter(reference_model(0, (64, 64)), memory_threshold=0.0, memory_size=1)
    one = evaluation.evaluate_split(cfg, segmenter, device=torch.device("cpu"), seed=42)
    parts = {}
    for rank in (1, 0):
        monkeypatch.setattr(evaluation, "get_rank", lambda: rank)
        monkeypatch.setattr(evaluation, "get_world_size", lambda: 2)
        monkeypatch.setattr(evaluation, "all_gather_object",
                            lambda mine: parts.setdefault(rank, mine) and [parts.get(0, []), parts[1]])
        two = evaluation.evaluate_split(cfg, segmenter, device=torch.device("cpu"), seed=42)
    by_video = {}
    for entry in two["videos"]:
        by_video.setdefault(entry["video"], set()).add(entry["rank"])
    assert all(len(ranks) == 1 for ranks in by_video.values())
    assert {entry["rank"] for entry in two["videos"]} == {0, 1}
    assert [dict(v, rank=0) for v in two["videos"]] == one["videos"]
    assert two["mean"] == one["mean"] and two["per_class"] == one["per_class"]


def test_benchmark_counts_the_queries_and_frames_sharing_saves(shared_data, capsys):
    """benchmarks/shared_features.py (counts only): the numbers read from train.json above."""
    from benchmarks import shared_features

    queries, saved = frames_saved(shared_data)
    plan = shared_features.main(["--root", shared_data, "--groups", "1"])["folds"][1]
    assert plan["shared_queries"] == queries and plan["query_frames"] - plan["encoded_frames"] == saved
    assert plan["backbone_frames"] - plan["backbone_frames_shared"] == saved
    assert "| 1 | " in capsys.readouterr().out
