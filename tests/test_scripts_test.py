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


@pytest.mark.slow
@pytest.mark.e2e
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
    from dataset import EpisodeSpec, build_dataset

    test_set = build_dataset("youtube_vis", root=data, split="test", group=1, spec=EpisodeSpec(image_size=(64, 64)))
    videos = len(test_set)                                   # every video showing class 1
    first = result["runs"][0]
    assert first["num_videos"] == videos and len(first["videos"]) == videos
    frames = sum(v["frames"] for v in first["videos"])
    assert first["num_frames"] == frames == sum(len(test_set[i]["frame_names"]) for i in range(videos))
    # overlays: one image per frame and one contact sheet per video (first run only)
    written = [os.path.join(d, f) for d, _, files in os.walk(vis) for f in files]
    assert sum(f.endswith("_sheet.jpg") for f in written) == videos
    assert sum(not f.endswith("_sheet.jpg") for f in written) == frames


@pytest.mark.slow
@pytest.mark.e2e
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
    from vipmt.segmenter import make_segmenter

    model = VIPMT(backbone_weights=None, image_size=(64, 64))
    for values, dtype in (({}, None), ({"test_bf16": True}, torch.bfloat16)):
        cfg = resolve_config({}, dict(values, image_size=[64, 64]))
        assert make_segmenter(model, cfg).autocast_dtype == dtype


@pytest.mark.slow
def test_memory_pool_size_reaches_the_engine_and_the_results(setup, tmp_path, monkeypatch):
    """``test.py memory_pool_size=3``: the engine draws memory from the 3 latest reliable frames only
    (seen from the draws it makes), and the results JSON and the log say so."""
    import models.engine

    root, data, ours, _ = setup
    offered = []                                  # how many memory candidates each draw was offered
    draw = models.engine.draw_memory

    def counted_draw(candidates, memory_size, generator):
        offered.append(len(candidates))
        return draw(candidates, memory_size, generator)

    monkeypatch.setattr(models.engine, "draw_memory", counted_draw)
    out = tmp_path / "pool.json"
    # 8-frame videos in 5-frame clips, every frame reliable: the second clip sees 5 candidates unbounded
    assert run(test_script, ["--data-root", data, "--checkpoint", ours, "--output", out] + ARGS
               + ["memory_threshold=0.0", "memory_pool_size=3"]) == 0
    assert max(offered) == 3
    result = json.loads(out.read_text())
    assert result["engine"]["memory_pool_size"] == 3 and result["config"]["memory_pool_size"] == 3
    assert result["engine"]["memory_threshold"] == 0.0 and result["engine"]["clip_length"] == 5
    assert "memory_pool_size 3" in (tmp_path / "pool.log").read_text()


@pytest.mark.slow
@pytest.mark.e2e
def test_results_and_log_go_into_the_run_directory_named_after_checkpoint_and_seed(setup, tmp_path):
    root, data, ours, _ = setup
    run_dir = tmp_path / "runs" / "mine"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("image_size: [64, 64]\n")       # marks one of our run directories
    ckpt = run_dir / "epoch_003.pth"
    ckpt.write_bytes(open(ours, "rb").read())
    assert run(test_script, ["--data-root", data, "--checkpoint", ckpt, "--seed", "7"] + ARGS) == 0
    json_path, log_path = run_dir / "test" / "test_epoch_003_seed7.json", run_dir / "test" / "test_epoch_003_seed7.log"
    assert json.loads(json_path.read_text())["aggregate"]["seeds"] == [7]
    log = log_path.read_text()
    assert "metrics table" in log and "results written to" in log
    # an authors' file outside any run directory: results go to <output_dir>/<run_name>/test/
    assert run(test_script, ["--data-root", data, "--checkpoint", ours, "--output-dir", tmp_path / "runs",
                             "--run-name", "other", "--runs", "2"] + ARGS) == 0
    assert (tmp_path / "runs" / "other" / "test" / "test_ours_seeds42-43.json").is_file()


@pytest.mark.parametrize("where", ["output", "save_vis"])
def test_unwritable_output_is_refused_before_the_model_is_loaded(setup, tmp_path, capsys, monkeypatch, where):
    root, data, ours, _ = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    import vipmt.testrun as testrun

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output location was checked")

    monkeypatch.setattr(testrun, "model_under_test", must_not_load)
    argv = ["--data-root", data, "--checkpoint", ours] + ARGS
    argv += ["--output", blocker / "results.json"] if where == "output" else \
        ["--output", tmp_path / "r.json", "--save-vis", blocker / "vis"]
    assert run(test_script, argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not a directory" in err and str(blocker) in err


@pytest.mark.slow
@pytest.mark.e2e
def test_full_disk_keeps_the_results_in_a_fallback_file_it_names(setup, tmp_path, monkeypatch, capsys):
    """The results JSON cannot be written (its fsync fails with ENOSPC, as on a full file system
    with delayed allocation): the table goes to stdout and the JSON to a fallback file; exit 2."""
    import tempfile

    from helpers import fail_fsync_of

    root, data, ours, _ = setup
    out = tmp_path / "full" / "results.json"
    fail_fsync_of(monkeypatch, "/.results.json.tmp")
    (tmp_path / "fallback").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "fallback"))
    assert run(test_script, ["--data-root", data, "--checkpoint", ours, "--output", out] + ARGS) == 2
    captured = capsys.readouterr()
    assert "metrics in %" in captured.out and "mean" in captured.out
    fallback = tmp_path / "fallback" / f"results.unsaved-{os.getpid()}.json"
    assert f"error: cannot write {str(out)!r}: No space left on device (" in captured.err
    assert f"the results are saved to {str(fallback)!r}" in captured.err and "Traceback" not in captured.err
    assert json.loads(fallback.read_text())["metrics"] == ["J", "F", "class_iou", "VC_7"]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_second_test_into_the_same_results_file_is_refused(setup, tmp_path, capsys):
    import subprocess
    import sys
    import textwrap

    root, data, ours, _ = setup
    out = tmp_path / "shared.json"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from vipmt.testrun import results_lock
        lock = results_lock(sys.argv[1]).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """), str(out)], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run(test_script, ["--data-root", data, "--checkpoint", ours, "--output", out] + ARGS) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"error: results file {str(out)!r} is in use by another process: pid {holder.pid}" in err
    assert not out.exists() and not (tmp_path / "shared.log").exists()     # the log is not mixed either


def test_torchrun_with_fewer_gpus_than_processes_is_one_clear_error(tmp_path, capsys, monkeypatch):
    """2 processes per machine with --device cuda and one GPU: exit 2 and what to do, before the
    process group starts (no process waits for the others)."""
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")           # torchrun sets them too (utils.distributed checks)
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert run(test_script, ["--data-root", tmp_path, "--checkpoint", "none", "--device", "cuda",
                             "--output", tmp_path / "r.json"]) == 2
    err = capsys.readouterr().err
    assert "error: torchrun started 2 processes" in err and "only 1 GPU" in err
    assert "--nproc_per_node 1" in err and "--device cpu" in err and "Traceback" not in err
    assert not dist.is_initialized() and not (tmp_path / "r.json").exists()
