"""The run-directory lock: one process per run, released by the kernel even on kill -9."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.runlock import remove_stale_temporaries
from utils.runlock import LOCK_FILE, RunLock, RunLockError, held_run_lock, read_holder
from utils.runtime import EXIT_USER_ERROR, UserError

ROOT = Path(__file__).resolve().parents[1]
STALE = ".last.pth.tmp4242_0123abcd"        # the name an interrupted atomic write leaves

HOLDER = textwrap.dedent(f"""
    import sys, time
    from utils.runlock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    open(sys.argv[1] + "/{STALE}", "wb").write(b"a checkpoint being written")
    print("locked", flush=True)
    time.sleep(600)
""")

STARTER = textwrap.dedent("""
    import sys
    from utils.runlock import RunLock
    from utils.runtime import UserError, run_cli

    def main(argv):
        with RunLock(argv[0]) as lock:
            print("removed", lock.remove_stale_temporaries())
        return 0

    sys.exit(run_cli(main, sys.argv[1:], (UserError,)))
""")


def start_holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()           # blocks until the holder has the lock (or died)
    if line.strip() != "locked":
        proc.kill()
        proc.wait()
        pytest.fail(f"the holder process did not take the lock (printed {line!r})")
    return proc


@pytest.mark.slow
def test_second_process_is_refused_and_the_lock_survives_only_its_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        refused = subprocess.run([sys.executable, "-c", STARTER, str(run_dir)], cwd=ROOT, capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode == EXIT_USER_ERROR, refused.stderr
        message = refused.stderr.strip()
        assert message.startswith("error: run directory") and "Traceback" not in message
        assert str(run_dir) in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        # a cleanup alone (this test process is another process too) is refused the same way
        with pytest.raises(RunLockError, match=f"pid {holder.pid} on host"):
            remove_stale_temporaries(str(run_dir))
        # the live run's temporary (a write in progress) is still there
        assert (run_dir / STALE).read_bytes() == b"a checkpoint being written"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    # kill -9 left no lock behind: the next run takes it and cleans the dead run's temporary
    with RunLock(str(run_dir)) as lock:
        assert lock.remove_stale_temporaries() == [STALE]
    assert not (run_dir / STALE).exists()


def test_record_names_the_holder_and_is_cleared_on_release(tmp_path):
    with RunLock(str(tmp_path / "run")) as lock:
        record = read_holder(str(tmp_path / "run"))
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert held_run_lock(str(tmp_path / "run")) is lock
    assert not lock.held and held_run_lock(str(tmp_path / "run")) is None
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""        # the file stays, without a record
    lock.release()                                                  # idempotent
    with RunLock(str(tmp_path / "run")):                            # and it can be taken again
        pass


def test_one_lock_per_directory_in_one_process_too(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunLockError, match=f"already locked by this process \\(pid {os.getpid()}\\)"):
            RunLock(str(tmp_path / ".")).acquire()                  # the same directory by another path
    assert issubclass(RunLockError, UserError)


def test_stale_temporaries_are_removed_only_under_the_lock(tmp_path):
    (tmp_path / STALE).write_bytes(b"x")
    lock = RunLock(str(tmp_path))
    with pytest.raises(RuntimeError, match="not held"):
        lock.remove_stale_temporaries()
    assert (tmp_path / STALE).exists()
    with lock:
        assert lock.remove_stale_temporaries() == [STALE]
        (tmp_path / STALE).write_bytes(b"x")
        assert remove_stale_temporaries(str(tmp_path)) == [STALE]  # uses the lock this process holds
    (tmp_path / STALE).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path)) == [STALE]      # takes the lock for the moment
    assert held_run_lock(str(tmp_path)) is None
