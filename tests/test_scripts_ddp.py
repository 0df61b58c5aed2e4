"""train.py and test.py under torchrun with 2 CPU processes (gloo): two local "nodes" over the c10d rendezvous, and an
elastic restart (--max-restarts 1) after SIGKILL of a worker that --auto-resume continues exactly;
test.py's videos shared out between 2 processes.

The training runs use the stand-in network (tests/standin_train.py: train.py with everything but the network):
what is tested is torchrun's plumbing around the loop (rendezvous, ranks, RNG states, the restart). The real
network under DDP is tests/test_episode_ddp.py's; test.py here runs the real one."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from scripts_support import REPO, assert_same_run, load_script, run, tiny, write_dataset

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
# Every clip of the elastic run takes this long: the worker is killed between step 1's last.pth and step 2's.
ELASTIC_ENV = dict(ENV, STANDIN_SECONDS_PER_CLIP="0.5")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 2 training classes x 2 episodes = 2 steps per rank in one epoch; last.pth after step 1 (inside the epoch).
SETTINGS = tiny("episodes_per_class=2", "checkpoint_every_iters=1")
pytestmark = [pytest.mark.ddp, pytest.mark.e2e, pytest.mark.slow]   # torchrun runs of train.py and test.py
TIMEOUT_S = 1200          # per torchrun: a loaded 2-core machine took over 600 s once (load 33)


def _train_args(data, out, run_name):
    return [os.path.join(REPO, "tests", "standin_train.py"), "--data-root", data, "--device", "cpu", "--backbone-weights", "none",
            "--output-dir", str(out), "--run-name", run_name] + SETTINGS


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _finish(proc, what):
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{what} timed out:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """An uninterrupted run of 2 processes started as two local nodes: two torchrun agents of one process
    each, meeting at a c10d rendezvous on 127.0.0.1 (what two machines of a cluster do)."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_dataset(str(root / "ytvis"), num_categories=3)
    endpoint, agents = f"127.0.0.1:{_free_port()}", []
    for node in range(2):
        agents.append(subprocess.Popen(
            TORCHRUN + ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                        endpoint, "--rdzv-id", "two_nodes", "--rdzv-conf", f"is_host={int(node == 0)}",
                        "--local-addr", "127.0.0.1"] + _train_args(data, root / "runs", "two_nodes"),
            cwd=str(root), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for node, agent in enumerate(agents):
        rc, out = _finish(agent, f"node {node}")
        assert rc == 0, out[-3000:]
    return root, data, root / "runs" / "two_nodes"


def test_two_local_nodes_train_one_ddp_run(two_nodes):
    _, _, run_dir = two_nodes
    ckpt = _load(run_dir / "last.pth")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2      # both ranks' RNG states saved
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2        # two steps per rank, one epoch
    record = ckpt["metrics"]["history"][0]
    assert all(math.isfinite(record[k]) for k in ("train_loss", "train_main", "train_aux", "train_score"))
    assert 0.0 <= record["val_mean_class_iou"] <= 1.0
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])   # saved unwrapped
    assert "device cpu x 2 processes" in (run_dir / "train.log").read_text()


def test_elastic_restart_after_sigkill_ends_with_the_uninterrupted_weights(two_nodes):
    """torchrun --standalone --nproc_per_node 2 --max-restarts 1 ... --auto-resume; rank 0 is killed with -9
    once last.pth exists (after step 1 of 2): torchrun restarts both workers, they continue from last.pth
    and the run ends with rc 0 and the weights of the uninterrupted run."""
    root, data, reference = two_nodes
    run_dir = root / "runs" / "elastic"
    proc = subprocess.Popen(TORCHRUN + ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
                            + _train_args(data, root / "runs", "elastic") + ["--auto-resume"],
                            cwd=str(root), env=ELASTIC_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + TIMEOUT_S
        while not (run_dir / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before its first checkpoint:\n" + proc.stdout.read()[-3000:]
        from utils.runlock import read_holder

        rank0 = read_holder(str(run_dir))["pid"]         # rank 0 holds the run lock and writes the checkpoints
        assert torch.load(run_dir / "last.pth", weights_only=True, mmap=True)["global_step"] == 1   # (mmap: fast)
        os.kill(rank0, signal.SIGKILL)
        rc, out = _finish(proc, "the elastic run")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, out[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "torchrun restarted the workers (restart 1 of at most 1)" in log
    assert "--auto-resume: no last.pth in the run directory, starting a new run" in log      # the first start
    assert "--auto-resume: continuing from" in log and "resumed after epoch 0 + 1 iterations" in log
    assert_same_run(_load(reference / "last.pth"), _load(run_dir / "last.pth"))




def test_test_py_under_torchrun_equals_one_process(tmp_path):
    """test.py with 2 CPU processes (gloo) and 2 videos per pass gives every per-video entry and the
    aggregate of a plain one-process run, one video at a time; both ranks segment videos. Clips of
    2 frames with every frame reliable and 1 memory frame drawn from several: the memory draws of
    each video are its own, whichever process and batch segment it."""
    data = write_dataset(str(tmp_path / "ytvis"), frames=5)
    options = ["--data-root", data, "--checkpoint", "none", "--backbone-weights", "none", "--device", "cpu",
               "--output-dir", tmp_path / "runs"]
    settings = ["image_size=64,64", "num_workers=0", "support_shots=2", "clip_length=2", "query_frames=4",
                "memory_threshold=0", "memory_size=1"]
    assert run(load_script("test"), options + ["--output", tmp_path / "one.json"] + settings) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "test.py")] + [str(a) for a in options] + ["--output", str(tmp_path / "two.json")] \
        + settings + ["test_video_batch=2"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["aggregate"].pop("world_size") == 1 and two["aggregate"].pop("world_size") == 2
    assert two["aggregate"] == one["aggregate"] and two["runs"][0]["mean"] == one["runs"][0]["mean"]
    videos_one, videos_two = one["runs"][0]["videos"], two["runs"][0]["videos"]
    assert len(videos_one) >= 3 and {v["rank"] for v in videos_one} == {0}
    assert {v["rank"] for v in videos_two} == {0, 1}
    assert [dict(v, rank=0) for v in videos_two] == videos_one
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))   # one JSON, at --output
