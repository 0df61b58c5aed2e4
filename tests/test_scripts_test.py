"""test.py end to end: JSON with every metric, --runs, --save-vis, our and the authors' format."""
import json
import os

import pytest
import torch

from scripts_support import load_script, run, write_dataset

test_script = load_script("test")
ARGS = ["--device", "cpu", "image_size=64,64", "num_workers=0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data (class 1 held out: 3 videos of 8 frames) and one untrained model in both formats."""
    from models import VIPMT
    from utils.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("test_script")
    data = write_dataset(str(root / "ytvis"))
    torch.manual_seed(0)
    model = VIPMT(backbone_weights=None, image_size=(64, 64))
    ours = save_checkpoint(str(root / "ours.pth"), model=model, epoch=3,
                           config={"image_size": [64, 64]})
    authors = root / "authors.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, authors)
    return root, data, ours, str(authors)


def test_writes_json_with_every_metric_and_overlays(setup):
    root, data, ours, _ = setup
    out, vis = root / "ours.json", root / "vis"
    assert run(test_script, ["--data-root", data, "--checkpoint", ours, "--output", out, "--runs", "2",
                             "--save-vis", vis] + ARGS) == 0
    result = json.loads(out.read_text())
    assert result["metrics"] == ["J", "F", "class_iou", "VC_7"]
    agg = result["aggregate"]
    assert agg["seeds"] == [42, 43] and agg["runs"] == 2 and len(result["runs"]) == 2
    assert list(agg["per_class"]) == ["1"]
    for key in ("J", "F", "class_iou", "VC_7"):
        stat = agg["mean"][key]
        assert 0.0 <= stat["mean"] <= 1.0 and stat["std"] >= 0.0, key
        runs = [r["mean"][key] for r in result["runs"]]
        assert stat["mean"] == pytest.approx(sum(runs) / 2)
    from dataset import build_dataset

    test_set = build_dataset("youtube_vis", root=data, split="test", group=1, image_size=(64, 64))
    videos = len(test_set)                                   # every video showing class 1
    first = result["runs"][0]
    assert first["num_videos"] == videos and len(first["videos"]) == videos
    frames = sum(v["frames"] for v in first["videos"])
    assert first["num_frames"] == frames == sum(len(test_set[i]["frame_names"]) for i in range(videos))
    # overlays: one image per frame and one contact sheet per video (first run only)
    written = [os.path.join(d, f) for d, _, files in os.walk(vis) for f in files]
    assert sum(f.endswith("_sheet.jpg") for f in written) == videos
    assert sum(not f.endswith("_sheet.jpg") for f in written) == frames


def test_authors_checkpoint_gives_the_same_numbers(setup):
    root, data, ours, authors = setup
    assert run(test_script, ["--data-root", data, "--checkpoint", ours, "--output", root / "a.json"] + ARGS) == 0
    assert run(test_script, ["--data-root", data, "--checkpoint", authors, "--output", root / "b.json"] + ARGS) == 0
    a = json.loads((root / "a.json").read_text())
    b = json.loads((root / "b.json").read_text())
    assert a["aggregate"]["mean"] == b["aggregate"]["mean"]
    assert "authors'" in b["checkpoint"] and "ours" in a["checkpoint"]


def test_bf16_config_key_switches_the_engine_to_bfloat16_autocast():
    from models import VIPMT
    from vipmt.cli import resolve_config
    from vipmt.evaluation import make_segmenter

    model = VIPMT(backbone_weights=None, image_size=(64, 64))
    for values, dtype in (({}, None), ({"test_bf16": True}, torch.bfloat16)):
        cfg = resolve_config({}, dict(values, image_size=[64, 64]))
        assert make_segmenter(model, cfg).autocast_dtype == dtype
