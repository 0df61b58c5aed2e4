"""Stop signals while training (vipmt.signals): SIGTERM, SIGUSR1 (SLURM's --signal=USR1@300) and SIGHUP (a
dropped ssh session) finish the step, save last.pth and exit with status 75, never by the signal; a second
signal of the same burst (SLURM's SIGTERM to the workers, then torchrun's forwarded one) does not make the
run exit without saving; only a second Ctrl-C 2 s or more after the first does."""
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
import torch

from scripts_support import REPO, tiny, write_dataset

EXIT_STOPPED = 75
TIMEOUT_S = 900
# train.py runs (with the stand-in network, tests/standin_train.py): 4 classes, group 1 holds out class 1:
# 3 training classes x 2 episodes = 6 steps in the one epoch (_train_argv)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data") / "ytvis"))


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


# ------------------------------------------------------------------ the rule, signal by signal
class _Exited(Exception):
    pass


@pytest.fixture
def stop_signals(monkeypatch):
    """A StopSignals in training with a clock the test sets; os._exit raises _Exited(status)."""
    from vipmt import signals as stop

    clock = [1000.0]
    monkeypatch.setattr(stop.time, "monotonic", lambda: clock[0])

    def exit_at_once(status):
        raise _Exited(status)

    monkeypatch.setattr(stop.os, "_exit", exit_at_once)
    handler = stop.StopSignals()
    handler.start_training()
    return handler, clock


def test_cluster_signals_never_exit_without_saving(stop_signals, capfd):
    handler, clock = stop_signals
    handler._on_signal(signal.SIGTERM, None)
    assert handler.received() == signal.SIGTERM
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM):      # the burst, and later ones
        clock[0] += 5
        handler._on_signal(sig, None)
    assert handler.received() == signal.SIGTERM
    err = capfd.readouterr().err
    assert "SIGTERM: stopping after the current step and saving last.pth, then exit status 75" in err
    assert "SIGUSR1: already stopping after the current step (SIGTERM)" in err


def test_only_a_second_ctrl_c_two_seconds_later_exits_at_once(stop_signals, capfd):
    handler, clock = stop_signals
    handler._on_signal(signal.SIGINT, None)
    clock[0] += 0.3                                  # the same Ctrl-C, forwarded by a launcher
    handler._on_signal(signal.SIGINT, None)
    assert "SIGINT again within 2 s: the same stop" in capfd.readouterr().err
    clock[0] += 1.8
    with pytest.raises(_Exited) as exited:           # a person pressing Ctrl-C again
        handler._on_signal(signal.SIGINT, None)
    assert exited.value.args == (130,)
    assert "SIGINT again: exiting at once without saving" in capfd.readouterr().err


def test_ctrl_c_after_a_cluster_signal_is_a_first_ctrl_c(stop_signals):
    handler, clock = stop_signals
    handler._on_signal(signal.SIGTERM, None)
    clock[0] += 10
    handler._on_signal(signal.SIGINT, None)
    clock[0] += 1
    handler._on_signal(signal.SIGINT, None)
    clock[0] += 1.5
    with pytest.raises(_Exited):
        handler._on_signal(signal.SIGINT, None)


def test_before_training_a_stop_signal_is_a_keyboard_interrupt():
    from vipmt.signals import StopSignals

    with pytest.raises(KeyboardInterrupt):
        StopSignals()._on_signal(signal.SIGTERM, None)


@pytest.mark.slow
def test_data_loader_workers_ignore_the_stop_signals():
    from vipmt.signals import STOP_SIGNALS

    code = ("import os, signal, sys, time; sys.path.insert(0, %r)\n"
            "from vipmt.build import build_train_loader\n"
            "from vipmt.signals import ignore_stop_signals\n"
            "ignore_stop_signals(0)\n"
            "[os.kill(os.getpid(), s) for s in (%s)]\n"
            "time.sleep(0.2); print('alive')" % (REPO, ", ".join(f"signal.{s.name}" for s in STOP_SIGNALS)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "alive" in proc.stdout, proc.stderr
    import inspect

    from vipmt.build import build_train_loader
    assert inspect.signature(build_train_loader).parameters["worker_init_fn"].default.__name__ == \
        "ignore_stop_signals"


# ------------------------------------------------------------------ real processes
class Output:
    """The text a process writes to a pipe or a pty, read by a thread as it comes."""

    def __init__(self, fd):
        self.fd, self.text, self.stop = fd, "", threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:                  # the pty's other side closed
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern, proc, timeout=TIMEOUT_S):
        deadline = time.time() + timeout
        while not re.search(pattern, self.text):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ended or timed out before {pattern!r}:\n{self.text[-3000:]}")
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.thread.join()


def _train_argv(data, out, run_name, *overrides):
    settings = {item.split("=")[0]: item for item in ("episodes_per_class=2", *overrides)}
    return [sys.executable, os.path.join(REPO, "tests", "standin_train.py"), "--data-root", data, "--device", "cpu",
            "--backbone-weights", "none", "--output-dir", str(out), "--run-name", run_name] + tiny(*settings.values())


def _env():
    # train.py with the stand-in network (the signals are the point, not the model); a step of 3 clips
    # takes ~0.6 s, so that the signal arrives while the epoch runs
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, STANDIN_SECONDS_PER_CLIP="0.2")


def _finish(proc, what):
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{what} did not end")


def _assert_stopped_mid_epoch(run_dir, sig, steps=6):
    ckpt = _load(run_dir / "last.pth")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["iteration"] < steps, (ckpt["epoch"], ckpt["iteration"])
    log = (run_dir / "train.log").read_text()
    assert f"interrupted at epoch 1, iteration {ckpt['iteration']}/{steps} ({sig}, step {ckpt['global_step']})" \
        in log, log[-2000:]


def _signalled_after_first_step(argv, send, what, cwd=REPO):
    """Run ``argv`` (train.py, or torchrun with it), its output to a pipe; call ``send(proc)`` once rank 0's
    first step is done; wait for the end. Returns (exit status, output)."""
    proc = subprocess.Popen(argv, cwd=str(cwd), env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = Output(proc.stdout.fileno())
    try:
        out.wait_for(r"\| 1/6 \[", proc)                 # the progress bar after the first step
        send(proc)
        return _finish(proc, what), out.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


@pytest.mark.slow
def test_sigusr1_mid_epoch_saves_last_pth_and_exits_75(data, tmp_path):
    status, text = _signalled_after_first_step(_train_argv(data, tmp_path, "usr1"),
                                               lambda proc: proc.send_signal(signal.SIGUSR1), "train.py after SIGUSR1")
    assert status == EXIT_STOPPED, text[-3000:]
    assert "SIGUSR1: stopping after the current step and saving last.pth" in text and "Traceback" not in text
    _assert_stopped_mid_epoch(tmp_path / "usr1", "SIGUSR1")


def _controlling_terminal():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
def test_a_closed_terminal_sighup_saves_last_pth_and_exits_75(data, tmp_path):
    """train.py on a pseudo-terminal (its controlling terminal, progress bars on it) with a DataLoader
    worker: the terminal closes (the kernel sends SIGHUP, later writes fail) and the shell's SIGHUP
    reaches the whole process group, as when an ssh connection drops."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))     # a terminal of 120 columns
    proc = subprocess.Popen(_train_argv(data, tmp_path, "hup", "num_workers=1"), cwd=REPO, env=_env(),
                            stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_terminal)
    os.close(slave)
    out = Output(master)
    try:
        out.wait_for(r"\| 1/6 \[", proc)
        out.close()
        os.close(master)                                 # the terminal hangs up: SIGHUP to train.py
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGHUP)               # the shell's SIGHUP to its job, the worker included
        status = _finish(proc, "train.py after SIGHUP")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status == EXIT_STOPPED
    _assert_stopped_mid_epoch(tmp_path / "hup", "SIGHUP")


def _ctrl_c_twice(proc):
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_delivered_twice_at_once_is_one_stop(data, tmp_path):
    status, text = _signalled_after_first_step(_train_argv(data, tmp_path, "twice"), _ctrl_c_twice,
                                               "train.py after two SIGINTs")
    assert status == EXIT_STOPPED, text[-3000:]
    assert "SIGINT again within 2 s: the same stop" in text
    _assert_stopped_mid_epoch(tmp_path / "twice", "SIGINT")


def _children(pid):
    """The pids of the processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.ddp
@pytest.mark.slow
def test_slurm_order_under_torchrun_saves_last_pth(data, tmp_path):
    """torchrun --standalone --nproc_per_node 2 (gloo, a DataLoader worker each): SIGTERM to every process of
    the workers, then 1 s later to the torchrun agent, which forwards its own SIGTERM to them (SLURM's
    order). The workers finish the step, save last.pth and exit 75; nobody dies by the signal."""
    run_dir = tmp_path / "runs" / "slurm"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + \
        _train_argv(data, tmp_path / "runs", "slurm", "num_workers=1", "episodes_per_class=4")[1:]

    def slurm_order(agent):                    # rank 0's bar says 1/6: 12 episodes, 6 steps per rank
        workers = [pid for pid in _children(agent.pid) if "train.py" in open(f"/proc/{pid}/cmdline").read()]
        assert len(workers) == 2
        for pid in workers:                    # each worker leads its process group (torchrun)
            os.killpg(pid, signal.SIGTERM)
        time.sleep(1.0)
        agent.send_signal(signal.SIGTERM)

    status, text = _signalled_after_first_step(argv, slurm_order, "torchrun after SIGTERM", cwd=tmp_path)
    # torchrun itself ends with status 1 and its SignalException traceback (torch's launcher, not ours)
    assert status >= 0, text[-3000:]                     # nobody died by the signal
    assert "exiting at once" not in text, text[-3000:]
    assert text.count("SIGTERM: stopping after the current step") == 1     # rank 0 says it once
    _assert_stopped_mid_epoch(run_dir, "SIGTERM")
    assert _load(run_dir / "last.pth")["world_size"] == 2


@pytest.mark.parametrize("status, requeued", [(EXIT_STOPPED, True), (0, False), (1, False)])
def test_the_job_script_requeues_a_stopped_fold_only(tmp_path, status, requeued):
    """scripts/slurm_fold.sbatch at the time limit (USR1 to the batch shell): SIGTERM to reproduce.py, then
    `scontrol requeue` when it stopped (75), not when it finished (0) or failed (1) meanwhile. `python`
    and `scontrol` are stand-ins that record what they get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/started\ntrap 'exit {status}' TERM\n"
                                    f"while true; do sleep 0.05; done\n")
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/scontrol\n")
    for name in ("python", "scontrol"):
        os.chmod(bin_dir / name, 0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="2", SLURM_JOB_ID="42",
               SLURM_SUBMIT_DIR=str(tmp_path))
    job = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "slurm_fold.sbatch"), "--test-runs", "5"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "started").read_text().split() == ["reproduce.py", "--folds", "2", "--device", "cuda",
                                                          "--test-runs", "5"]
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=60)
    assert (tmp_path / "scontrol").exists() == requeued, out
    if requeued:
        assert (tmp_path / "scontrol").read_text().split() == ["requeue", "42"] and job.returncode == 0
    else:
        assert job.returncode == status and "not requeued" in out
