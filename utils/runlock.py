"""One training process per run directory: an OS lock on ``<run_dir>/.lock``.

    with RunLock(run_dir) as lock:          # UserError (exit 2) if another process holds it
        lock.remove_stale_temporaries()     # only the holder may delete interrupted writes
        ...train...

The lock is ``fcntl.flock`` on the file ``.lock``: the kernel releases it when the holding
process ends in any way (return, exception, kill -9, power loss of a client on NFSv4, where
Linux maps flock to a byte-range lock), so there is never a stale lock to delete by hand. The
file also records the holder's pid, host, start time and command, which the refusal names;
that record is informative only, the kernel lock alone decides. The file is never deleted or
replaced (a new inode would let a second process lock it while the first still holds the old
one). Forked children (DataLoader workers) share the lock; they end with their parent.

Deleting the hidden temporaries that killed writes leave behind is only safe while no other
process writes in the directory, so :func:`utils.runlock.remove_stale_temporaries` runs under
this lock: the process's held lock of that directory, or a lock taken for the moment of the
deletion (and refused, naming the holder, while another process holds it).

DDP (torchrun): one lock per run, held by rank 0 for all ranks. Rank 0 (``RANK`` 0 in the
environment, or no ``RANK``) enters ``RunLock(run_dir)`` before ``init_distributed`` so that a
refusal ends the job before the other ranks wait on it; the other ranks take no lock and never
call ``remove_stale_temporaries`` (which would try to take the lock and be refused).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from .fileio import WriteError, failure_reason, write_error
from .runtime import UserError
from .tempnames import remove_temporaries

__all__ = ["LOCK_FILE", "RunLock", "RunLockError", "held_run_lock", "read_holder", "remove_stale_temporaries"]

LOCK_FILE = ".lock"
# A holder writes its record right after locking; a reader that finds the file empty in that
# instant waits this long for the record before reporting the holder as unknown.
HOLDER_RECORD_WAIT_S = 1.0
HOLDER_RECORD_POLL_S = 0.05

# Run directories (real paths) whose lock this process holds -> the RunLock holding it.
_HELD: Dict[str, "RunLock"] = {}
_HELD_GUARD = threading.Lock()


class RunLockError(UserError):
    """The run directory is locked by another process (the message names its pid and host)."""


def _key(run_dir: str) -> str:
    return os.path.realpath(run_dir)


def held_run_lock(run_dir: str) -> Optional["RunLock"]:
    """The RunLock of ``run_dir`` that this process holds, or None."""
    with _HELD_GUARD:
        return _HELD.get(os.path.join(_key(run_dir), LOCK_FILE))


def read_holder(run_dir: str, name: str = LOCK_FILE) -> Optional[Dict[str, Any]]:
    """The holder record of ``<run_dir>/.lock`` (pid, host, since, command), or None if unreadable.

    Informative only: a record may be left by a process that has ended.
    """
    try:
        with open(os.path.join(run_dir, name), encoding="utf-8") as f:
            text = f.read()
        record = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: Optional[Dict[str, Any]]) -> str:
    if not record:
        return "a process whose pid and host are unknown (it has not written its record yet)"
    text = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"
    if record.get("since"):
        text += f", since {record['since']}"
    if record.get("command"):
        text += f", command: {record['command']}"
    return text


def _missing_directories(directory: str) -> List[str]:
    """The folders ``os.makedirs(directory)`` would create, deepest first."""
    missing = []
    path = os.path.abspath(directory)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _open_lock_file(path: str) -> "tuple[int, bool]":
    """(descriptor, whether this call created the file) of the lock file ``path``."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
    except FileExistsError:
        return os.open(path, os.O_RDWR), False


class RunLock:
    """Exclusive, crash-safe lock of one run directory (see the module docstring).

    ``acquire()`` (or ``with RunLock(run_dir) as lock:``) creates ``run_dir`` if needed, locks
    ``<run_dir>/.lock`` without waiting and writes the holder record; it raises
    :class:`RunLockError` (a :class:`UserError`) naming the directory and the holder's pid and
    host when another process holds it. ``release()`` is idempotent.
    """

    def __init__(self, run_dir: str, *, name: str = LOCK_FILE, label: Optional[str] = None,
                 advice: str = "Wait for that run to finish or stop it, or choose another --run-name / --output-dir."):
        """``name``: the lock file in ``run_dir`` (another name locks one output file of a folder that
        several processes share, e.g. test.py's results); ``label`` names what is locked in the
        refusal (default "run directory '<run_dir>'"), ``advice`` ends it."""
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, name)
        self.label = label or f"run directory {self.run_dir!r}"
        self.advice = advice
        self._key = os.path.join(_key(self.run_dir), name)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self.held:
            raise RuntimeError(f"RunLock of {self.run_dir!r} is already held by this object")
        with _HELD_GUARD:
            other = _HELD.get(self._key)
        if other is not None:
            raise RunLockError(f"{self.label} is already locked by this process "
                               f"(pid {os.getpid()}); it serves one run at a time")
        made_dirs = _missing_directories(self.run_dir)
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            fd, created = _open_lock_file(self.path)
        except OSError as exc:
            self._remove(False, made_dirs)
            raise UserError(f"cannot create the lock file {self.path!r}: {failure_reason(self.path, exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {self.path!r}: {exc.strerror}") from None
            raise RunLockError(
                f"{self.label} is in use by another process: "
                f"{_describe(self._wait_for_record())}. {self.advice}") from None
        self._fd = fd
        try:
            self._write_record()
        except OSError as exc:          # a full disk, a quota: nothing is left of this attempt
            self._remove(created, made_dirs)
            self.release()
            error = write_error(self.path, exc)
            raise WriteError(error.errno, f"{error}: the lock of {self.label} cannot be taken, "
                             f"so nothing was written") from None
        except BaseException:
            self.release()
            raise
        with _HELD_GUARD:
            _HELD[self._key] = self
        return self

    def _remove(self, lock_file: bool, directories: List[str]) -> None:
        """Delete the lock file (still held: no other process can have locked it) and the folders
        this failed acquire created, so that it leaves nothing behind."""
        try:
            if lock_file:
                os.unlink(self.path)
            for directory in directories:             # deepest first
                os.rmdir(directory)
        except OSError:
            pass

    def _wait_for_record(self) -> Optional[Dict[str, Any]]:
        deadline = time.monotonic() + HOLDER_RECORD_WAIT_S
        while True:
            record = read_holder(self.run_dir, os.path.basename(self.path))
            if record is not None or time.monotonic() >= deadline:
                return record
            time.sleep(HOLDER_RECORD_POLL_S)

    def _write_record(self) -> None:
        """Rewrite the record in place (same inode: the lock belongs to this file)."""
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "command": " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])}
        data = (json.dumps(record) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with _HELD_GUARD:
            if _HELD.get(self._key) is self:
                del _HELD[self._key]
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)           # no record of a holder that has gone
        except OSError:
            pass
        finally:
            os.close(fd)                  # closing the last descriptor releases the flock

    def remove_stale_temporaries(self) -> List[str]:
        """Delete the temporaries that killed writes left in the run directory; returns their names."""
        if not self.held:
            raise RuntimeError(f"remove_stale_temporaries: the lock of {self.run_dir!r} is not held")
        return remove_temporaries(self.run_dir)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({self.run_dir!r}, held={self.held})"


def remove_stale_temporaries(directory: str) -> list:
    """Delete the temporaries that writes killed mid-way (kill -9) left in `directory`; returns their names.

    A write in progress looks exactly like an interrupted one, so this runs only under the
    directory's run lock: the one this process holds, else one taken for
    the moment of the deletion, which is refused (RunLockError, naming the holder's pid and
    host) while another process holds it.
    """
    if held_run_lock(directory) is not None:
        return remove_temporaries(directory)
    with RunLock(directory):
        return remove_temporaries(directory)
