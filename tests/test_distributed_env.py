"""A broken torchrun environment (variables left over from another job in a shell without torchrun) is
one `error:` line naming the variables read, exit status 2, for train.py and test.py: WORLD_SIZE=2
alone (was KeyError: 'RANK'), stale WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT that no other process joins
(test.py waited silently for torch's 30 minutes; now VIPMT_RENDEZVOUS_TIMEOUT seconds)."""
import os
import socket
import subprocess
import sys
import time

import pytest

from scripts_support import REPO, TINY, error_line, load_script, write_dataset

train = load_script("train")
test_script = load_script("test")
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                      "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "GROUP_WORLD_SIZE",
                      "TORCHELASTIC_RESTART_COUNT", "VIPMT_RENDEZVOUS_TIMEOUT")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


@pytest.fixture
def clean_env(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_world_size_without_rank_is_one_error_and_leaves_no_run_folder(data, tmp_path, clean_env, capsys):
    clean_env.setenv("WORLD_SIZE", "2")
    common = ["--data-root", data, "--device", "cpu", "--backbone-weights", "none", "--output-dir", tmp_path / "runs"]
    for script, extra in ((train, TINY), (test_script, ["--checkpoint", "none", "image_size=64,64"])):
        msg = error_line(script, common + extra, capsys)
        assert "WORLD_SIZE=2" in msg and "RANK, MASTER_ADDR and MASTER_PORT are not set" in msg, msg
        assert "not started by torchrun" in msg and "unset WORLD_SIZE RANK" in msg and "torchrun" in msg
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


@pytest.mark.parametrize("variables, expected", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0: expected an integer >= 1"),
    ({"RANK": "1"}, "RANK=1 is not below WORLD_SIZE=1 (WORLD_SIZE not set)"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "port"}, "MASTER_PORT='port' is not an"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
      "VIPMT_RENDEZVOUS_TIMEOUT": "soon"}, "VIPMT_RENDEZVOUS_TIMEOUT='soon': expected a number of seconds > 0"),
])
def test_unusable_variables_are_named(clean_env, variables, expected):
    from utils import distributed as du
    from utils.runtime import UserError

    for name, value in variables.items():
        clean_env.setenv(name, value)
    with pytest.raises(UserError) as info:
        du.init_distributed("cpu")
    assert expected in str(info.value)


def test_one_process_environments_need_no_variables(clean_env):
    from utils import distributed as du

    assert du.distributed_env() == du.DistEnv(world_size=1, rank=0, local_rank=0)
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("RANK", "0")
    assert du.init_distributed("cpu") == du.DistInfo()
    assert du.rendezvous_timeout() == du.DEFAULT_RENDEZVOUS_TIMEOUT_S
    clean_env.setenv("VIPMT_RENDEZVOUS_TIMEOUT", "2.5")
    assert du.rendezvous_timeout() == 2.5


def _script(name, data, out, env):
    argv = [sys.executable, os.path.join(REPO, f"{name}.py"), "--data-root", data, "--device", "cpu",
            "--backbone-weights", "none", "--output-dir", str(out)]
    argv += ["--checkpoint", "none", "image_size=64,64"] if name == "test" else TINY
    started = time.time()
    try:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}.py waited for 300 s with a stale torchrun environment")
    return proc, time.time() - started


# both scripts and both ranks (rank 0 hosts the store, rank 1 connects to it), each script once: the
# rendezvous is one function (utils.distributed.init_distributed) that both call
@pytest.mark.parametrize("name, rank", [("train", "0"), ("test", "1")])
@pytest.mark.slow
def test_stale_torchrun_variables_end_within_the_rendezvous_timeout(data, tmp_path, name, rank):
    """RANK 0 waits for a process 1 that never comes; RANK 1 for a rank 0 that is not there."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    port = _free_port()
    env.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               VIPMT_RENDEZVOUS_TIMEOUT="3")
    proc, seconds = _script(name, data, tmp_path / "runs", env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    msg = lines[0]
    assert "the 2 processes of this job did not meet within 3 s" in msg, msg
    assert f"WORLD_SIZE=2, RANK={rank}, MASTER_ADDR=127.0.0.1, MASTER_PORT={port}" in msg
    assert "LOCAL_RANK not set" in msg and "not started by torchrun" in msg
    assert "unset WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT" in msg and "VIPMT_RENDEZVOUS_TIMEOUT" in msg
    assert seconds < 120
    if name == "train":            # a start that failed before training leaves no run folder
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pth"))
